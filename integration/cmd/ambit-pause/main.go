// Command ambit-pause is the process of Ambit's pod sandbox image
// (docker.io/ambit/pause): it holds the pod's namespaces open, reaps every
// child it inherits (it is PID 1 of the pod when the pod shares its process
// namespace), and exits 0 on SIGTERM or SIGINT. It takes no arguments but
// -version.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambit-mesh/ambit/pkg/version"
)

func main() {
	if len(os.Args) > 1 {
		if len(os.Args) == 2 && (os.Args[1] == "-version" || os.Args[1] == "--version") {
			fmt.Println(version.String("ambit-pause"))
			return
		}
		fmt.Fprintf(os.Stderr, "usage: ambit-pause [-version]\n  waits for SIGTERM or SIGINT, reaping orphaned children, then exits 0\n")
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	// Children may have become zombies before the handler was installed.
	reap()
	for s := range sigs {
		if s == syscall.SIGCHLD {
			reap()
			continue
		}
		reap()
		os.Exit(0)
	}
}

// reap collects every exited child without blocking. Signals coalesce, so
// one SIGCHLD may stand for many children.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
