// Command ambit-cluster runs the one-machine Kubernetes of package
// integration/cluster:
//
//	ambit-cluster [-state-dir DIR] up [-pause-image FILE] [-timeout D]
//	ambit-cluster [-state-dir DIR] down
//	ambit-cluster [-state-dir DIR] status
//	ambit-cluster [-state-dir DIR] import FILE...
//	ambit-cluster [-state-dir DIR] kubeconfig
//
// hack/cluster.sh builds and calls it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/integration/cluster"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ambit-cluster:", err)
		os.Exit(1)
	}
}

const usage = `usage: ambit-cluster [-state-dir DIR] [-repo DIR] COMMAND
commands:
  up [-pause-image FILE] [-timeout D]  start the cluster (idempotent), wait until it is ready
  down                                 stop it and remove everything it made (also after a crash)
  status                               processes, memory and health of each component
  import FILE...                       import OCI image archives into containerd's k8s.io namespace
  kubeconfig                           print the administrator's kubeconfig path`

func run(args []string) error {
	fs := flag.NewFlagSet("ambit-cluster", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprintln(os.Stderr, usage) }
	stateDir := fs.String("state-dir", cluster.DefaultStateDir, "the cluster's state folder")
	repo := fs.String("repo", "", "the Ambit checkout whose make tools built the binaries (default: found from the working directory)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return fmt.Errorf("no command")
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	opts := cluster.Options{StateDir: *stateDir, RepoRoot: *repo, Log: os.Stderr}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	switch cmd {
	case "up":
		sub := flag.NewFlagSet("up", flag.ContinueOnError)
		pause := sub.String("pause-image", "", "OCI archive of the pod sandbox image (default: the cluster's own)")
		timeout := sub.Duration("timeout", 5*time.Minute, "give up after this long")
		if err := sub.Parse(rest); err != nil {
			return err
		}
		if sub.NArg() != 0 {
			return fmt.Errorf("up takes no arguments, got %q", sub.Args())
		}
		opts.PauseImage = *pause
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		c, err := cluster.Up(ctx, opts)
		if err != nil {
			return err
		}
		fmt.Printf("export KUBECONFIG=%s\n", c.Kubeconfig())
		return nil
	case "down":
		if len(rest) != 0 {
			return fmt.Errorf("down takes no arguments, got %q", rest)
		}
		return cluster.Down(ctx, opts)
	case "status":
		if len(rest) != 0 {
			return fmt.Errorf("status takes no arguments, got %q", rest)
		}
		c, err := cluster.New(opts)
		if err != nil {
			return err
		}
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		st.Print(os.Stdout)
		if !st.Up() {
			os.Exit(3)
		}
		return nil
	case "import":
		if len(rest) == 0 {
			return fmt.Errorf("import needs at least one image archive")
		}
		c, err := cluster.New(opts)
		if err != nil {
			return err
		}
		return c.Import(ctx, rest...)
	case "kubeconfig":
		c, err := cluster.New(opts)
		if err != nil {
			return err
		}
		fmt.Println(c.Kubeconfig())
		return nil
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}
