package cniinstall

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults of Options.
const (
	DefaultLogFile      = "/var/run/ambit/cni.log"
	DefaultPollInterval = time.Second
)

// ErrNoConfig is reported (wrapped) while the conf folder holds no CNI
// configuration.
var ErrNoConfig = errors.New("no CNI configuration yet")

// PluginConfig is Ambit's entry in the conflist (see docs/reference/cni.md).
type PluginConfig struct {
	// SocketPath is ztunnel's enrolment socket. Required, absolute.
	SocketPath string
	// LogFile is where the plugin logs; empty means no log.
	LogFile string
	// LogLevel is debug, info, warn or error; empty leaves the plugin's default.
	LogLevel string
	// FailOpen lets pods start outside the mesh when ztunnel is unreachable.
	FailOpen bool
	// ExcludeNamespaces, when not nil, replaces the plugin's default list.
	ExcludeNamespaces []string
	// Timeout bounds one call to ztunnel (a Go duration); empty leaves the
	// plugin's default.
	Timeout string
}

// Entry returns the JSON plugin entry, fields in a fixed order.
func (c PluginConfig) Entry() (json.RawMessage, error) {
	if !filepath.IsAbs(c.SocketPath) {
		return nil, fmt.Errorf("socket path %q must be absolute", c.SocketPath)
	}
	if c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
		return nil, fmt.Errorf("log file %q must be absolute", c.LogFile)
	}
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return nil, fmt.Errorf("log level %q is not one of debug, info, warn, error", c.LogLevel)
	}
	if c.Timeout != "" {
		if d, err := time.ParseDuration(c.Timeout); err != nil || d <= 0 {
			return nil, fmt.Errorf("timeout %q is not a positive duration such as \"10s\"", c.Timeout)
		}
	}
	e := struct {
		Type              string    `json:"type"`
		SocketPath        string    `json:"socketPath"`
		FailOpen          bool      `json:"failOpen,omitempty"`
		ExcludeNamespaces *[]string `json:"excludeNamespaces,omitempty"`
		Timeout           string    `json:"timeout,omitempty"`
		LogFile           string    `json:"logFile,omitempty"`
		LogLevel          string    `json:"logLevel,omitempty"`
	}{Type: PluginType, SocketPath: c.SocketPath, FailOpen: c.FailOpen, Timeout: c.Timeout, LogFile: c.LogFile, LogLevel: c.LogLevel}
	if c.ExcludeNamespaces != nil {
		ex := slices.Clone(c.ExcludeNamespaces)
		e.ExcludeNamespaces = &ex
	}
	return json.Marshal(e)
}

// Options configures an Installer.
type Options struct {
	// BinDir is the runtime's CNI bin folder (the host's /opt/cni/bin, as
	// mounted). Required.
	BinDir string
	// ConfDir is the runtime's CNI conf folder (the host's /etc/cni/net.d).
	// Required.
	ConfDir string
	// PluginBinary is the ambit-cni executable to copy into BinDir. Required.
	PluginBinary string
	// Plugin is the conflist entry.
	Plugin PluginConfig
	// PollInterval is how often Run checks the files (DefaultPollInterval).
	PollInterval time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Installer chains ambit-cni into the node's CNI configuration. Its methods
// are safe for concurrent use.
type Installer struct {
	opts  Options
	entry json.RawMessage
	log   *slog.Logger

	mu      sync.Mutex  // serialises file changes
	state   error       // Ready's answer
	lastMsg string      // last logged problem, to log each one once
	binInfo fs.FileInfo // the installed binary as last verified
}

// New checks opts and returns an installer; it changes nothing.
func New(opts Options) (*Installer, error) {
	for _, d := range []struct{ name, path string }{{"bin folder", opts.BinDir}, {"conf folder", opts.ConfDir}, {"plugin binary", opts.PluginBinary}} {
		if d.path == "" {
			return nil, fmt.Errorf("cni install: %s is required", d.name)
		}
		if !filepath.IsAbs(d.path) {
			return nil, fmt.Errorf("cni install: %s %q must be an absolute path", d.name, d.path)
		}
	}
	fi, err := os.Stat(opts.PluginBinary)
	if err != nil {
		return nil, fmt.Errorf("cni install: plugin binary: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return nil, fmt.Errorf("cni install: plugin binary %s is not an executable file", opts.PluginBinary)
	}
	entry, err := opts.Plugin.Entry()
	if err != nil {
		return nil, fmt.Errorf("cni install: plugin entry: %w", err)
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Installer{opts: opts, entry: entry, log: opts.Logger.With("component", "cni-install"),
		state: errors.New("CNI plugin not installed yet")}, nil
}

// Ready returns nil while the plugin is installed and chained into the
// configuration the runtime uses, else the reason.
func (i *Installer) Ready() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.state
}

// Run installs and keeps the plugin chained until ctx ends, checking every
// PollInterval. It returns nil when ctx ends; problems are logged and
// reported by Ready.
func (i *Installer) Run(ctx context.Context) error {
	t := time.NewTicker(i.opts.PollInterval)
	defer t.Stop()
	for {
		_, _ = i.Reconcile()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Reconcile installs the binary and chains the entry once; it reports
// whether a file was written. The result is also what Ready returns.
func (i *Installer) Reconcile() (changed bool, err error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	changed, err = i.reconcile()
	i.state = err
	if err != nil {
		if msg := err.Error(); msg != i.lastMsg {
			i.lastMsg = msg
			if errors.Is(err, ErrNoConfig) {
				i.log.Info("waiting for the node's CNI configuration", "confDir", i.opts.ConfDir)
			} else {
				i.log.Error("cannot chain the CNI plugin", "err", err)
			}
		}
	} else {
		i.lastMsg = ""
	}
	return changed, err
}

func (i *Installer) reconcile() (bool, error) {
	binChanged, err := i.installBinary()
	if err != nil {
		return false, err
	}
	files, err := configFiles(i.opts.ConfDir)
	if err != nil {
		return binChanged, err
	}
	if len(files) == 0 {
		return binChanged, fmt.Errorf("%w in %s", ErrNoConfig, i.opts.ConfDir)
	}
	name := files[0]
	path := filepath.Join(i.opts.ConfDir, name)
	data, mode, err := readConfig(path)
	if err != nil {
		return binChanged, err
	}
	o, err := parseObject(data)
	if err != nil {
		return binChanged, fmt.Errorf("CNI config %s: %w", path, err)
	}
	if isList(o) || strings.HasSuffix(name, ".conflist") {
		out, changed, err := chainList(data, i.entry)
		if err != nil {
			return binChanged, fmt.Errorf("CNI config %s: %w", path, err)
		}
		if !changed {
			return binChanged, nil
		}
		if err := writeAtomic(path, out, mode); err != nil {
			return binChanged, err
		}
		i.log.Info("chained the CNI plugin", "file", path)
		return true, nil
	}
	// A single-plugin config: write it as a conflist, then remove it.
	listName := strings.TrimSuffix(name, filepath.Ext(name)) + ".conflist"
	listPath := filepath.Join(i.opts.ConfDir, listName)
	if existing, _, err := readConfig(listPath); err == nil {
		if lo, err := parseObject(existing); err != nil || !hasConverted(lo, name) {
			return binChanged, fmt.Errorf("CNI config %s must become %s to chain the plugin, but that file exists already", path, listPath)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return binChanged, err
	}
	out, err := convertConf(data, name, i.entry)
	if err != nil {
		return binChanged, fmt.Errorf("CNI config %s: %w", path, err)
	}
	if err := writeAtomic(listPath, out, mode); err != nil {
		return binChanged, err
	}
	if err := os.Remove(path); err != nil {
		return true, fmt.Errorf("remove %s after converting it: %w", path, err)
	}
	syncDir(i.opts.ConfDir)
	i.log.Info("chained the CNI plugin into a conflist made from a single-plugin config", "file", listPath, "from", path)
	return true, nil
}

// hasConverted reports whether a conflist was converted from file.
func hasConverted(o object, file string) bool {
	raw, ok := o.get(convertedKey)
	if !ok {
		return false
	}
	var c converted
	return json.Unmarshal(raw, &c) == nil && c.File == file
}

// installBinary copies the plugin into the bin folder unless an identical
// copy is there already.
func (i *Installer) installBinary() (bool, error) {
	dst := filepath.Join(i.opts.BinDir, PluginType)
	fi, err := os.Stat(dst)
	if err == nil && i.binInfo != nil && os.SameFile(fi, i.binInfo) && fi.ModTime().Equal(i.binInfo.ModTime()) && fi.Size() == i.binInfo.Size() {
		return false, nil // unchanged since it was last verified
	}
	i.binInfo = nil
	src, err := os.ReadFile(i.opts.PluginBinary)
	if err != nil {
		return false, fmt.Errorf("read plugin binary: %w", err)
	}
	changed := false
	if cur, err := os.ReadFile(dst); err != nil || !bytes.Equal(cur, src) {
		if err := writeAtomic(dst, src, 0o755); err != nil {
			return false, fmt.Errorf("install plugin binary: %w", err)
		}
		i.log.Info("installed the CNI plugin binary", "path", dst)
		changed = true
	}
	if fi, err := os.Stat(dst); err == nil {
		i.binInfo = fi
	}
	return changed, nil
}

// Uninstall removes Ambit's entry from every config file of the conf folder
// (restoring files it converted), the plugin's log file (Plugin.LogFile,
// which ztunnel sees at the same path as the host) and the plugin binary. It goes on
// after an error and returns all of them.
func (i *Installer) Uninstall() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.state = errors.New("CNI plugin uninstalled")
	i.binInfo = nil
	var errs []error
	files, err := configFiles(i.opts.ConfDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, name := range files {
		if err := i.unchainFile(name); err != nil {
			errs = append(errs, err)
		}
	}
	if f := i.opts.Plugin.LogFile; f != "" {
		if err := os.Remove(f); err == nil {
			i.log.Info("removed the CNI plugin's log file", "path", f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove plugin log file: %w", err))
		}
	}
	bin := filepath.Join(i.opts.BinDir, PluginType)
	if err := os.Remove(bin); err == nil {
		i.log.Info("removed the CNI plugin binary", "path", bin)
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove plugin binary: %w", err))
	}
	return errors.Join(errs...)
}

func (i *Installer) unchainFile(name string) error {
	path := filepath.Join(i.opts.ConfDir, name)
	data, mode, err := readConfig(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	o, err := parseObject(data)
	if err != nil || !isList(o) {
		return nil // not ours to fix; nothing of ours in it
	}
	out, rest, removed, err := unchainList(data)
	if err != nil {
		return fmt.Errorf("CNI config %s: %w", path, err)
	}
	if !removed {
		return nil
	}
	if rest != nil {
		if !validRestoreName(rest.File) {
			return fmt.Errorf("CNI config %s: converted from an invalid file name %q", path, rest.File)
		}
		orig := filepath.Join(i.opts.ConfDir, rest.File)
		if _, err := os.Lstat(orig); err == nil && orig != path {
			// The network plugin wrote its file again meanwhile: that one
			// is newer than the copy kept here, so only the list goes.
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("remove %s: %w", path, err)
			}
			syncDir(i.opts.ConfDir)
			i.log.Info("unchained the CNI plugin: removed the converted config, the original exists again", "file", orig, "removed", path)
			return nil
		}
		if err := writeAtomic(orig, rest.Content, mode); err != nil {
			return err
		}
		if orig != path {
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("remove %s: %w", path, err)
			}
		}
		syncDir(i.opts.ConfDir)
		i.log.Info("unchained the CNI plugin and restored the original config", "file", orig, "removed", path)
		return nil
	}
	if err := writeAtomic(path, out, mode); err != nil {
		return err
	}
	i.log.Info("unchained the CNI plugin", "file", path)
	return nil
}

// validRestoreName accepts a plain file name of a CNI config.
func validRestoreName(name string) bool {
	return name != "" && filepath.Base(name) == name && !strings.HasPrefix(name, ".") && isConfigName(name)
}

// isConfigName reports whether the runtime reads a file of this name.
func isConfigName(name string) bool {
	switch filepath.Ext(name) {
	case ".conf", ".conflist", ".json":
		return true
	}
	return false
}

// configFiles lists the CNI config files of dir in the order the runtime
// considers them: *.conf, *.conflist and *.json (regular files or links to
// them), sorted by name.
func configFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist", ErrNoConfig, dir)
		}
		return nil, fmt.Errorf("read CNI conf folder: %w", err)
	}
	var out []string
	for _, e := range entries {
		if !isConfigName(e.Name()) {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out, nil
}

// maxConfigSize bounds a config file read.
const maxConfigSize = 1 << 20

func readConfig(path string) ([]byte, fs.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxConfigSize {
		return nil, 0, fmt.Errorf("CNI config %s is larger than %d bytes", path, maxConfigSize)
	}
	return data, fi.Mode().Perm(), nil
}

// writeAtomic writes data to path through a temporary file in the same
// folder (a name the runtime does not read), fsync and rename.
func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	name := tmp.Name()
	fail := func(err error) error {
		tmp.Close()
		_ = os.Remove(name)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(name, path); err != nil {
		_ = os.Remove(name)
		return fmt.Errorf("write %s: %w", path, err)
	}
	syncDir(dir)
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}
