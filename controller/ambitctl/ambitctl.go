package ambitctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/pkg/version"
)

// DefaultSystemNamespace is where Ambit's controller and ztunnel run.
const DefaultSystemNamespace = "ambit-system"

// Exit codes of Run.
const (
	ExitOK      = 0 // done; every check passed
	ExitFailed  = 1 // a check failed, or the cluster refused or failed a request
	ExitUsage   = 2 // bad command line
	exitUnknown = ExitUsage
)

// errUsage marks an error in the command line: Run prints it with the
// command's usage and exits with ExitUsage.
var errUsage = errors.New("usage")

func usageErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
}

// command is one ambitctl command.
type command struct {
	name    string // as typed: "waypoint apply"
	summary string
	args    string // positional arguments, for the usage line
	// flags registers the command's own flags; run runs it with the
	// remaining positional arguments.
	flags func(fs *flag.FlagSet) func(ctx context.Context, c *cli, args []string) error
	// local: the command needs no cluster. optionalCluster: it uses the
	// cluster when it can reach it (c.kube is nil when not, connectErr says
	// why).
	local, optionalCluster bool
}

func commands() []command {
	return []command{
		{name: "version", summary: "print ambitctl's version and the images of the controller, ztunnel and waypoints running in the cluster", optionalCluster: true, flags: versionFlags},
		{name: "check", summary: "check that Ambit is installed and healthy: CRDs, controller, CA root, ztunnel on every node, waypoints", flags: checkFlags},
		{name: "waypoint apply", summary: "create (or update) a waypoint Gateway in a namespace", flags: waypointApplyFlags},
		{name: "waypoint delete", args: "[NAME...]", summary: "delete waypoint Gateways (default: waypoint)", flags: waypointDeleteFlags},
		{name: "waypoint list", summary: "list waypoints, their state and what uses them", flags: waypointListFlags},
		{name: "waypoint-config", args: "[NAME]", summary: "show a waypoint's state: routes, policies, certificates (its admin config dump, through a port-forward)", flags: waypointConfigFlags},
		{name: "ztunnel-config", args: "[pods|workloads|services|policies|certificates|all]", summary: "show a node's ztunnel state (its admin config dump, through a port-forward)", flags: ztunnelConfigFlags},
	}
}

// cli is what every command shares: the output streams and the cluster.
type cli struct {
	stdout, stderr io.Writer
	// From the common flags.
	kubeconfig, context, namespace, systemNamespace string
	timeout                                         time.Duration

	restConfig *rest.Config
	kube       kubernetes.Interface
	client     client.Client
	// defaultNamespace is the kubeconfig context's namespace ("default"
	// when it has none); namespace (-n) wins over it.
	defaultNamespace string
	// connectErr is why a command that can do without the cluster has no
	// clients.
	connectErr error
}

// ns is the namespace a command works in: -n, else the context's.
func (c *cli) ns() string {
	if c.namespace != "" {
		return c.namespace
	}
	return c.defaultNamespace
}

// Run runs ambitctl with args (without the program name) and returns its
// exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := &cli{stdout: stdout, stderr: stderr}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		printUsage(stdout)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	if args[0] == "-version" || args[0] == "--version" {
		args = []string{"version", "-short"}
	}
	cmd, rest, ok := findCommand(args)
	if !ok {
		fmt.Fprintf(stderr, "ambitctl: unknown command %q\n\n", strings.Join(args[:min(2, len(args))], " "))
		printUsage(stderr)
		return exitUnknown
	}
	fs := flag.NewFlagSet("ambitctl "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	if !cmd.local {
		fs.StringVar(&c.kubeconfig, "kubeconfig", "", "the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
		fs.StringVar(&c.context, "context", "", "the kubeconfig context (default: its current context)")
		fs.StringVar(&c.namespace, "n", "", "the namespace (default: the context's)")
		fs.StringVar(&c.namespace, "namespace", "", "the namespace (default: the context's)")
		fs.StringVar(&c.systemNamespace, "system-namespace", DefaultSystemNamespace, "the namespace Ambit is installed in")
		fs.DurationVar(&c.timeout, "request-timeout", 30*time.Second, "how long one request to the cluster may take")
	}
	run := cmd.flags(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: ambitctl %s [flags] %s\n\n%s.\n\nflags:\n", cmd.name, cmd.args, upperFirst(cmd.summary))
		fs.PrintDefaults()
	}
	positional, err := parseInterspersed(fs, rest)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		return ExitUsage // the flag package printed the error and the usage
	}
	switch {
	case cmd.local:
	case cmd.optionalCluster:
		c.connectErr = c.connect()
	default:
		if err := c.connect(); err != nil {
			fmt.Fprintf(stderr, "ambitctl %s: %v\n", cmd.name, err)
			return ExitFailed
		}
	}
	if err := run(ctx, c, positional); err != nil {
		fmt.Fprintf(stderr, "ambitctl %s: %v\n", cmd.name, err)
		if errors.Is(err, errUsage) {
			fs.Usage()
			return ExitUsage
		}
		return ExitFailed
	}
	return ExitOK
}

// findCommand matches the longest command name at the start of args.
func findCommand(args []string) (command, []string, bool) {
	var best command
	bestWords := 0
	for _, cmd := range commands() {
		words := strings.Fields(cmd.name)
		if len(words) <= len(args) && len(words) > bestWords && slices.Equal(words, args[:len(words)]) {
			best, bestWords = cmd, len(words)
		}
	}
	return best, args[bestWords:], bestWords > 0
}

// parseInterspersed parses flags anywhere among the positional arguments
// (as kubectl does: "waypoint delete a -n ns b"); "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		if args[0] == "--" {
			return append(positional, args[1:]...), nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "ambitctl operates an Ambit mesh.\n\nusage: ambitctl COMMAND [flags] [arguments]\n\ncommands:\n")
	for _, cmd := range commands() {
		name := cmd.name
		if cmd.args != "" {
			name += " " + cmd.args
		}
		fmt.Fprintf(w, "  %-40s %s\n", name, cmd.summary)
	}
	fmt.Fprintf(w, "\nEvery command but version takes -kubeconfig, -context, -n/-namespace and -system-namespace.\n`ambitctl COMMAND -h` lists a command's flags.\n")
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// scheme knows the core types, Gateway API's and CustomResourceDefinitions.
func scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := gwapiv1.Install(s); err != nil {
		return nil, err
	}
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// connect loads the kubeconfig as kubectl does and builds the clients.
func (c *cli) connect() error {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: c.context}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = c.timeout
	cfg.UserAgent = "ambitctl/" + version.Version
	s, err := scheme()
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	cl, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return err
	}
	c.restConfig, c.kube, c.client, c.defaultNamespace = cfg, kube, cl, ns
	return nil
}
