// Command ambit-demo is Ambit's demo application, one static binary with two
// subcommands:
//
//	ambit-demo serve [flags]   an HTTP/1.1 and h2c service that answers with
//	                           JSON describing itself and the request, and can
//	                           call downstream services (a 3-tier sample app)
//	ambit-demo load [flags] URL...
//	                           a constant-rate traffic generator with a
//	                           periodic summary and Prometheus metrics
//	ambit-demo get [flags] URL one request, body to stdout (a curl for
//	                           images without a shell)
//
// The image docker.io/ambit/demo runs it; examples/sample-app deploys it.
// docs/reference/images.md lists the flags.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambit-mesh/ambit/pkg/version"
)

const usage = `usage: ambit-demo <command> [flags]

commands:
  serve    HTTP/1.1 + h2c demo service (ambit-demo serve -help)
  load     constant-rate traffic generator (ambit-demo load -help)
  get      one request, body to stdout (ambit-demo get -help)
  version  print the version
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	switch args[0] {
	case "serve":
		return serveCommand(ctx, args[1:], stderr, log)
	case "load":
		return loadCommand(ctx, args[1:], stderr, log)
	case "get":
		return getCommand(ctx, args[1:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, version.String("ambit-demo"))
		return 0
	case "help", "-help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "ambit-demo: unknown command %q\n%s", args[0], usage)
		return 2
	}
}

// envOr returns the environment variable key, or def when it is unset or empty.
func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
