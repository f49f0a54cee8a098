package cni

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

// DefaultExcludeNamespaces are never reported to ztunnel when the config does
// not set excludeNamespaces: the cluster's own components, and Ambit's (the
// ztunnel pod must start while there is no ztunnel yet).
var DefaultExcludeNamespaces = []string{"kube-system", "ambit-system"}

// DefaultTimeout bounds one call to ztunnel.
const DefaultTimeout = 10 * time.Second

// Config is the plugin's entry in a conflist.
type Config struct {
	types.PluginConf

	// SocketPath is ztunnel's enrolment socket (enroll.DefaultSocketPath).
	SocketPath string `json:"socketPath,omitempty"`
	// FailOpen lets ADD and CHECK succeed, without enrolment, when ztunnel
	// cannot be reached. Default false: the pod's network setup fails.
	FailOpen bool `json:"failOpen,omitempty"`
	// ExcludeNamespaces are passed through without contacting ztunnel.
	// Absent: DefaultExcludeNamespaces; [] excludes nothing.
	ExcludeNamespaces *[]string `json:"excludeNamespaces,omitempty"`
	// Timeout bounds one call to ztunnel, as a Go duration ("10s").
	Timeout string `json:"timeout,omitempty"`
	// LogFile receives the plugin's logs (appended); none when empty. The
	// plugin never logs to stdout, which carries the CNI result.
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `json:"logLevel,omitempty"`

	timeout time.Duration
	exclude map[string]bool
	level   slog.Level
}

// ParseConfig decodes and validates the plugin's stdin config and parses its
// prevResult. Errors are *types.Error with a CNI code.
func ParseConfig(stdin []byte) (*Config, error) {
	conf := &Config{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "ambit-cni: cannot parse the network config: "+err.Error(), "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "ambit-cni: cannot parse prevResult: "+err.Error(), "")
	}
	bad := func(format string, args ...any) error {
		return types.NewError(types.ErrInvalidNetworkConfig, "ambit-cni: invalid config: "+fmt.Sprintf(format, args...), "")
	}
	if conf.SocketPath == "" {
		conf.SocketPath = enroll.DefaultSocketPath
	}
	if !strings.HasPrefix(conf.SocketPath, "/") {
		return nil, bad("socketPath %q must be an absolute path", conf.SocketPath)
	}
	conf.timeout = DefaultTimeout
	if conf.Timeout != "" {
		d, err := time.ParseDuration(conf.Timeout)
		if err != nil || d <= 0 {
			return nil, bad("timeout %q is not a positive duration such as \"10s\"", conf.Timeout)
		}
		conf.timeout = d
	}
	excl := DefaultExcludeNamespaces
	if conf.ExcludeNamespaces != nil {
		excl = *conf.ExcludeNamespaces
	}
	conf.exclude = make(map[string]bool, len(excl))
	for _, ns := range excl {
		conf.exclude[ns] = true
	}
	switch strings.ToLower(conf.LogLevel) {
	case "", "info":
		conf.level = slog.LevelInfo
	case "debug":
		conf.level = slog.LevelDebug
	case "warn", "warning":
		conf.level = slog.LevelWarn
	case "error":
		conf.level = slog.LevelError
	default:
		return nil, bad("logLevel %q is not one of debug, info, warn, error", conf.LogLevel)
	}
	if conf.LogFile != "" && !strings.HasPrefix(conf.LogFile, "/") {
		return nil, bad("logFile %q must be an absolute path", conf.LogFile)
	}
	return conf, nil
}

// Excluded reports whether pods of namespace are passed through untouched.
func (c *Config) Excluded(namespace string) bool { return c.exclude[namespace] }

// podArgs are the Kubernetes fields of CNI_ARGS.
type podArgs struct {
	Namespace, Name, UID string
}

// parseArgs reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from
// CNI_ARGS ("K=V;K=V"), ignoring every other key.
func parseArgs(args string) podArgs {
	var p podArgs
	for _, kv := range strings.Split(args, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_UID":
			p.UID = v
		}
	}
	return p
}

// isPod reports whether the CNI call is for a Kubernetes pod at all.
func (p podArgs) isPod() bool { return p.Namespace != "" && p.Name != "" }

func (p podArgs) String() string { return p.Namespace + "/" + p.Name }
