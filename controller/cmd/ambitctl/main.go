package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambit-mesh/ambit/controller/ambitctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ambitctl.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
