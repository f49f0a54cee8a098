package cniinstall

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const bridgeList = `{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.253.0.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

const bridgeConf = `{"cniVersion": "0.4.0", "name": "mynet", "type": "bridge", "bridge": "cni0",
 "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}
`

type env struct {
	bin, conf, plugin, log string
	inst                   *Installer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{bin: filepath.Join(root, "bin"), conf: filepath.Join(root, "net.d"), plugin: filepath.Join(root, "src", "ambit-cni"),
		log: filepath.Join(root, "cni.log")}
	for _, d := range []string{e.bin, e.conf, filepath.Dir(e.plugin)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(e.plugin, []byte("#!/bin/sh\necho plugin\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	inst, err := New(Options{BinDir: e.bin, ConfDir: e.conf, PluginBinary: e.plugin,
		Plugin: PluginConfig{SocketPath: "/var/run/ambit/ztunnel.sock", LogFile: e.log},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e.inst = inst
	return e
}

func (e *env) write(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(e.conf, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (e *env) read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.conf, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *env) reconcile(t *testing.T, wantChanged bool) {
	t.Helper()
	changed, err := e.inst.Reconcile()
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	if changed != wantChanged {
		t.Fatalf("Reconcile changed = %v, want %v", changed, wantChanged)
	}
	if err := e.inst.Ready(); err != nil {
		t.Fatalf("Ready after a successful Reconcile: %v", err)
	}
}

// listFiles returns the names in the conf folder.
func (e *env) listFiles(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(e.conf)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range ents {
		out = append(out, d.Name())
	}
	return out
}

// pluginTypes returns the types of a conflist's plugins.
func pluginTypes(t *testing.T, data []byte) []string {
	t.Helper()
	var l struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(data, &l); err != nil {
		t.Fatalf("conflist is not valid JSON: %v\n%s", err, data)
	}
	var out []string
	for _, p := range l.Plugins {
		out = append(out, p.Type)
	}
	return out
}

func plugins(t *testing.T, data []byte) []json.RawMessage {
	t.Helper()
	var l struct {
		Plugins []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(data, &l); err != nil {
		t.Fatal(err)
	}
	return l.Plugins
}

func sameTypes(a []string, b ...string) bool {
	return strings.Join(a, ",") == strings.Join(b, ",")
}

func TestChainIntoConflist(t *testing.T) {
	e := newEnv(t)
	e.write(t, "10-bridge.conflist", bridgeList)
	e.write(t, "20-other.conflist", bridgeList)
	e.reconcile(t, true)

	got := e.read(t, "10-bridge.conflist")
	if ts := pluginTypes(t, got); !sameTypes(ts, "bridge", "portmap", "ambit-cni") {
		t.Fatalf("plugins = %v", ts)
	}
	// The other plugins are kept as they were, and the top-level fields
	// keep their order.
	orig, now := plugins(t, []byte(bridgeList)), plugins(t, got)
	for i := range orig {
		if !sameJSON(orig[i], now[i]) {
			t.Fatalf("plugin %d changed: %s -> %s", i, orig[i], now[i])
		}
	}
	if i, j := bytes.Index(got, []byte(`"cniVersion"`)), bytes.Index(got, []byte(`"plugins"`)); i < 0 || j < i {
		t.Fatalf("field order changed:\n%s", got)
	}
	var ours map[string]any
	if err := json.Unmarshal(now[2], &ours); err != nil {
		t.Fatal(err)
	}
	if ours["socketPath"] != "/var/run/ambit/ztunnel.sock" || ours["logFile"] != e.log {
		t.Fatalf("entry = %v", ours)
	}
	// Only the first file is the runtime's; the second is left alone.
	if string(e.read(t, "20-other.conflist")) != bridgeList {
		t.Fatal("a file the runtime does not use was changed")
	}
	// The binary is installed, executable, with the plugin's content.
	fi, err := os.Stat(filepath.Join(e.bin, PluginType))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o755 {
		t.Fatalf("binary mode %v", fi.Mode())
	}
	b, _ := os.ReadFile(filepath.Join(e.bin, PluginType))
	src, _ := os.ReadFile(e.plugin)
	if !bytes.Equal(b, src) {
		t.Fatal("installed binary differs from the plugin")
	}
	// No temporary file is left behind.
	if fs := e.listFiles(t); len(fs) != 2 {
		t.Fatalf("conf folder holds %v", fs)
	}
}

func TestIdempotent(t *testing.T) {
	e := newEnv(t)
	e.write(t, "10-bridge.conflist", bridgeList)
	e.reconcile(t, true)
	before, _ := os.Stat(filepath.Join(e.conf, "10-bridge.conflist"))
	binBefore, _ := os.Stat(filepath.Join(e.bin, PluginType))
	e.reconcile(t, false)
	e.reconcile(t, false)
	after, _ := os.Stat(filepath.Join(e.conf, "10-bridge.conflist"))
	binAfter, _ := os.Stat(filepath.Join(e.bin, PluginType))
	if !os.SameFile(before, after) || !before.ModTime().Equal(after.ModTime()) {
		t.Fatal("an already chained file was written again")
	}
	if !os.SameFile(binBefore, binAfter) {
		t.Fatal("an identical binary was written again")
	}
	// A second installer (a restarted ztunnel) finds nothing to do either.
	e2, err := New(e.inst.opts)
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := e2.Reconcile(); err != nil || changed {
		t.Fatalf("restarted installer: changed %v, err %v", changed, err)
	}
}

func TestBinaryReplacedWhenChanged(t *testing.T) {
	e := newEnv(t)
	e.write(t, "10-bridge.conflist", bridgeList)
	e.reconcile(t, true)
	dst := filepath.Join(e.bin, PluginType)
	if err := os.Remove(dst); err != nil {
		t.Fatal(err)
	}
	e.reconcile(t, true)
	if err := os.WriteFile(dst, []byte("tampered"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.reconcile(t, true)
	b, _ := os.ReadFile(dst)
	if string(b) == "tampered" {
		t.Fatal("a changed binary was not replaced")
	}
}

func TestConvertConfAndRestore(t *testing.T) {
	for _, name := range []string{"10-mynet.conf", "10-mynet.json"} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			e.write(t, name, bridgeConf)
			e.reconcile(t, true)
			if fs := e.listFiles(t); len(fs) != 1 || fs[0] != "10-mynet.conflist" {
				t.Fatalf("conf folder = %v, want only 10-mynet.conflist", fs)
			}
			got := e.read(t, "10-mynet.conflist")
			if ts := pluginTypes(t, got); !sameTypes(ts, "bridge", "ambit-cni") {
				t.Fatalf("plugins = %v", ts)
			}
			var l struct {
				CNIVersion string `json:"cniVersion"`
				Name       string `json:"name"`
			}
			_ = json.Unmarshal(got, &l)
			if l.CNIVersion != "0.4.0" || l.Name != "mynet" {
				t.Fatalf("list header = %+v", l)
			}
			if !sameJSON(plugins(t, got)[0], []byte(bridgeConf)) {
				t.Fatal("the converted plugin differs from the original config")
			}
			e.reconcile(t, false)
			if err := os.WriteFile(e.log, []byte("{}\n"), 0o600); err != nil { // as the plugin would
				t.Fatal(err)
			}

			if err := e.inst.Uninstall(); err != nil {
				t.Fatal(err)
			}
			if fs := e.listFiles(t); len(fs) != 1 || fs[0] != name {
				t.Fatalf("after uninstall the conf folder = %v, want %s", fs, name)
			}
			if string(e.read(t, name)) != bridgeConf {
				t.Fatal("the original config was not restored byte for byte")
			}
			if _, err := os.Stat(filepath.Join(e.bin, PluginType)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("binary still there: %v", err)
			}
			if _, err := os.Stat(e.log); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("plugin log still there: %v", err)
			}
			if e.inst.Ready() == nil {
				t.Fatal("ready after uninstall")
			}
		})
	}
}

func TestConvertRefusesForeignConflist(t *testing.T) {
	e := newEnv(t)
	e.write(t, "10-mynet.conf", bridgeConf)
	e.write(t, "10-mynet.conflist", bridgeList) // sorts after the .conf
	if _, err := e.inst.Reconcile(); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("err = %v", err)
	}
	if string(e.read(t, "10-mynet.conflist")) != bridgeList || string(e.read(t, "10-mynet.conf")) != bridgeConf {
		t.Fatal("files changed")
	}
}

func TestRechainAfterRewrite(t *testing.T) {
	e := newEnv(t)
	e.write(t, "10-bridge.conflist", bridgeList)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.inst.Run(ctx) }()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()

	waitTypes := func(name string, want ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, err := os.ReadFile(filepath.Join(e.conf, name))
			if err == nil && sameTypes(pluginTypes(t, b), want...) && e.inst.Ready() == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never had plugins %v (now %s, ready: %v)", name, want, b, e.inst.Ready())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitTypes("10-bridge.conflist", "bridge", "portmap", "ambit-cni")
	// The network plugin's agent rewrites its file, dropping our entry.
	e.write(t, "10-bridge.conflist", bridgeList)
	waitTypes("10-bridge.conflist", "bridge", "portmap", "ambit-cni")
	// A new file that sorts first becomes the runtime's config.
	e.write(t, "05-calico.conflist", `{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"calico"}]}`)
	waitTypes("05-calico.conflist", "calico", "ambit-cni")
	// A stale entry of ours with other settings is replaced, not duplicated.
	e.write(t, "05-calico.conflist", `{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"calico"},{"type":"ambit-cni","socketPath":"/old.sock"},{"type":"ambit-cni"}]}`)
	waitTypes("05-calico.conflist", "calico", "ambit-cni")
	var ours map[string]any
	_ = json.Unmarshal(plugins(t, e.read(t, "05-calico.conflist"))[1], &ours)
	if ours["socketPath"] != "/var/run/ambit/ztunnel.sock" {
		t.Fatalf("stale entry kept: %v", ours)
	}

	cancel()
	stopped = true
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := e.inst.Uninstall(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"05-calico.conflist", "10-bridge.conflist"} {
		if ts := pluginTypes(t, e.read(t, name)); strings.Contains(strings.Join(ts, ","), PluginType) {
			t.Fatalf("%s still chains the plugin: %v", name, ts)
		}
	}
	if !sameTypes(pluginTypes(t, e.read(t, "10-bridge.conflist")), "bridge", "portmap") {
		t.Fatal("uninstall lost a plugin")
	}
	orig, now := plugins(t, []byte(bridgeList)), plugins(t, e.read(t, "10-bridge.conflist"))
	for i := range orig {
		if !sameJSON(orig[i], now[i]) {
			t.Fatalf("plugin %d changed by uninstall: %s -> %s", i, orig[i], now[i])
		}
	}
}

func TestUninstallKeepsRewrittenOriginal(t *testing.T) {
	e := newEnv(t)
	e.write(t, "10-mynet.conf", bridgeConf)
	e.reconcile(t, true)
	// The network plugin's agent writes its file again, with new settings,
	// and ztunnel stops before converting it again.
	newer := strings.Replace(bridgeConf, "10.22.0.0/16", "10.23.0.0/16", 1)
	e.write(t, "10-mynet.conf", newer)
	if err := e.inst.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if fs := e.listFiles(t); len(fs) != 1 || fs[0] != "10-mynet.conf" {
		t.Fatalf("conf folder = %v", fs)
	}
	if string(e.read(t, "10-mynet.conf")) != newer {
		t.Fatal("the newer original was overwritten with the old copy")
	}
}

func TestReconvertAfterOriginalRewritten(t *testing.T) {
	e := newEnv(t)
	e.write(t, "10-mynet.conf", bridgeConf)
	e.reconcile(t, true)
	newer := strings.Replace(bridgeConf, "10.22.0.0/16", "10.23.0.0/16", 1)
	e.write(t, "10-mynet.conf", newer)
	e.reconcile(t, true)
	if fs := e.listFiles(t); len(fs) != 1 || fs[0] != "10-mynet.conflist" {
		t.Fatalf("conf folder = %v", fs)
	}
	if !sameJSON(plugins(t, e.read(t, "10-mynet.conflist"))[0], []byte(newer)) {
		t.Fatal("the converted list does not hold the newer config")
	}
	if err := e.inst.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if string(e.read(t, "10-mynet.conf")) != newer {
		t.Fatal("uninstall did not restore the newer original")
	}
}

func TestUninstallKeepsConvertedListThatChanged(t *testing.T) {
	e := newEnv(t)
	e.write(t, "10-mynet.conf", bridgeConf)
	e.reconcile(t, true)
	// Another agent appends its own plugin to the converted list.
	b := e.read(t, "10-mynet.conflist")
	var l map[string]any
	_ = json.Unmarshal(b, &l)
	l["plugins"] = append(l["plugins"].([]any), map[string]any{"type": "tuning"})
	nb, _ := json.Marshal(l)
	e.write(t, "10-mynet.conflist", string(nb))
	if err := e.inst.Uninstall(); err != nil {
		t.Fatal(err)
	}
	got := e.read(t, "10-mynet.conflist")
	if ts := pluginTypes(t, got); !sameTypes(ts, "bridge", "tuning") {
		t.Fatalf("plugins = %v", ts)
	}
	if bytes.Contains(got, []byte(convertedKey)) {
		t.Fatal("conversion marker left behind")
	}
	if _, err := os.Stat(filepath.Join(e.conf, "10-mynet.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the original was restored although the list changed")
	}
}

func TestMalformedConfig(t *testing.T) {
	for name, content := range map[string]string{
		"10-a.conflist": `{"cniVersion": "1.0.0", "plugins": [`,
		"10-b.conflist": `{"cniVersion": "1.0.0", "plugins": {"type": "bridge"}}`,
		"10-c.conflist": `{"cniVersion": "1.0.0", "plugins": [{"bridge": "cni0"}]}`,
		"10-d.conflist": `{"cniVersion": "1.0.0", "plugins": []}`,
		"10-e.conflist": `[1, 2]`,
		"10-f.conf":     `{"cniVersion": "1.0.0", "name": "x"}`,
		"10-g.conf":     `{"type": "ambit-cni"}`,
		"10-h.conflist": `{"name": 5, "plugins": [{"type": "bridge"}]}`,
		"10-i.conflist": `{"plugins": [{"type": "bridge"}], "plugins": []}`,
		"10-j.conflist": `{"plugins": [{"type": "bridge"}]} {}`,
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			e.write(t, name, content)
			_, err := e.inst.Reconcile()
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), filepath.Join(e.conf, name)) {
				t.Fatalf("error does not name the file: %v", err)
			}
			if e.inst.Ready() == nil {
				t.Fatal("ready with a malformed config")
			}
			if string(e.read(t, name)) != content {
				t.Fatal("malformed file was written")
			}
			if fs := e.listFiles(t); len(fs) != 1 {
				t.Fatalf("conf folder = %v", fs)
			}
		})
	}
}

func TestWaitsForConfig(t *testing.T) {
	e := newEnv(t)
	if err := os.Remove(e.conf); err != nil {
		t.Fatal(err)
	}
	_, err := e.inst.Reconcile()
	if !errors.Is(err, ErrNoConfig) {
		t.Fatalf("missing folder: err = %v", err)
	}
	if err := os.MkdirAll(e.conf, 0o755); err != nil {
		t.Fatal(err)
	}
	e.write(t, "README", "not a config")
	e.write(t, ".hidden.tmp-1", "{")
	if _, err := e.inst.Reconcile(); !errors.Is(err, ErrNoConfig) {
		t.Fatalf("empty folder: err = %v", err)
	}
	if err := e.inst.Ready(); err == nil || !strings.Contains(err.Error(), "no CNI configuration") {
		t.Fatalf("Ready = %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.inst.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(30 * time.Millisecond)
	e.write(t, "10-bridge.conflist", bridgeList)
	deadline := time.Now().Add(5 * time.Second)
	for e.inst.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("never ready: %v", e.inst.Ready())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if ts := pluginTypes(t, e.read(t, "10-bridge.conflist")); !sameTypes(ts, "bridge", "portmap", "ambit-cni") {
		t.Fatalf("plugins = %v", ts)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "ambit-cni")
	if err := os.WriteFile(exe, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	noexec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noexec, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := Options{BinDir: dir, ConfDir: dir, PluginBinary: exe, Plugin: PluginConfig{SocketPath: "/s.sock"}}
	for name, tc := range map[string]struct {
		mod  func(*Options)
		want string
	}{
		"relative bin":     {func(o *Options) { o.BinDir = "bin" }, "absolute"},
		"no conf":          {func(o *Options) { o.ConfDir = "" }, "required"},
		"missing binary":   {func(o *Options) { o.PluginBinary = filepath.Join(dir, "nope") }, "no such file"},
		"not executable":   {func(o *Options) { o.PluginBinary = noexec }, "not an executable"},
		"folder as binary": {func(o *Options) { o.PluginBinary = dir }, "not an executable"},
		"relative socket":  {func(o *Options) { o.Plugin.SocketPath = "s.sock" }, "absolute"},
		"bad level":        {func(o *Options) { o.Plugin.LogLevel = "loud" }, "log level"},
		"bad timeout":      {func(o *Options) { o.Plugin.Timeout = "soon" }, "timeout"},
	} {
		t.Run(name, func(t *testing.T) {
			o := good
			tc.mod(&o)
			if _, err := New(o); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := New(good); err != nil {
		t.Fatal(err)
	}
}

func TestEntryFields(t *testing.T) {
	b, err := PluginConfig{SocketPath: "/s.sock", LogFile: "/l.log", LogLevel: "debug", FailOpen: true,
		ExcludeNamespaces: []string{}, Timeout: "3s"}.Entry()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"ambit-cni","socketPath":"/s.sock","failOpen":true,"excludeNamespaces":[],"timeout":"3s","logFile":"/l.log","logLevel":"debug"}`
	if string(b) != want {
		t.Fatalf("entry = %s", b)
	}
}
