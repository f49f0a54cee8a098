package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFlagErrors: bad flag combinations stop ztunnel with a clear error
// before anything starts.
func TestFlagErrors(t *testing.T) {
	dir := t.TempDir()
	plugin := filepath.Join(dir, "ambit-cni")
	if err := os.WriteFile(plugin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	base := []string{"-node-name", "n1"}
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"bin without conf":     {[]string{"-cni-bin-dir", dir}, "go together"},
		"conf without bin":     {[]string{"-cni-conf-dir", dir}, "go together"},
		"plugin alone":         {[]string{"-cni-plugin", plugin}, "needs -cni-bin-dir"},
		"missing plugin":       {[]string{"-cni-bin-dir", dir, "-cni-conf-dir", dir, "-cni-plugin", filepath.Join(dir, "nope")}, "plugin binary"},
		"default plugin":       {[]string{"-cni-bin-dir", dir, "-cni-conf-dir", dir}, "next to ztunnel's executable"},
		"relative conf dir":    {[]string{"-cni-bin-dir", dir, "-cni-conf-dir", "net.d", "-cni-plugin", plugin}, "absolute"},
		"bad plugin level":     {[]string{"-cni-bin-dir", dir, "-cni-conf-dir", dir, "-cni-plugin", plugin, "-cni-log-level", "loud"}, "log level"},
		"bad daemonset":        {[]string{"-daemonset", "ztunnel"}, "<namespace>/<name>"},
		"daemonset outside":    {[]string{"-daemonset", "ambit-system/ztunnel"}, "KUBERNETES_SERVICE_HOST"},
		"relative discovery":   {[]string{"-discover-netns-dir", "netns"}, "absolute"},
		"relative host proc":   {[]string{"-host-proc", "proc"}, "absolute"},
		"host proc not proc":   {[]string{"-host-proc", dir}, "not a proc filesystem"},
		"stray argument":       {[]string{"extra"}, "unexpected arguments"},
		"local CA, secure xDS": {[]string{"-local-ca-trust-domain", "cluster.local"}, "add -xds-insecure"},
		"bad nameserver":       {[]string{"-socks5-nameservers", "dns.example"}, "-socks5-nameservers"},
	} {
		t.Run(name, func(t *testing.T) {
			err := run(append(append([]string{}, base...), tc.args...))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
