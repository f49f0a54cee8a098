// Command tinyapp is the one static binary behind the cluster's own small
// images: run as "pause" (or with no argument) it is a pod sandbox that waits
// for SIGTERM or SIGINT and reaps orphans; "serve ADDR" answers every HTTP
// request with "<hostname> <path>"; "get URL" fetches URL, prints the body and
// exits non-zero unless the status is 200; "cat FILE" prints a file (the image
// has no shell).
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		args = []string{"pause"}
	}
	var err error
	switch args[0] {
	case "pause":
		pause()
	case "serve":
		if len(args) != 2 {
			usage()
		}
		err = serve(args[1])
	case "get":
		if len(args) != 2 {
			usage()
		}
		err = get(args[1])
	case "cat":
		if len(args) != 2 {
			usage()
		}
		err = cat(args[1])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tinyapp:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: tinyapp [pause | serve ADDR | get URL | cat FILE]")
	os.Exit(2)
}

// pause waits for SIGTERM or SIGINT, reaping children that are re-parented to it.
func pause() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s == syscall.SIGCHLD {
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}

func serve(addr string) error {
	host, _ := os.Hostname()
	srv := &http.Server{
		Addr:              addr,
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s\n", host, r.URL.Path)
		}),
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	return nil
}

func get(url string) error {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	os.Stdout.Write(body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %s", url, resp.Status)
	}
	return nil
}

func cat(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(b)
	return err
}
