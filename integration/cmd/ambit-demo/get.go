package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// getCommand is a tiny curl for images without a shell: it GETs one URL,
// prints the status line to stderr and the body to stdout, and exits 1 when
// the status is 400 or more (or no answer came).
func getCommand(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ambit-demo get", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: ambit-demo get [flags] URL\n\nGETs URL, prints the status to stderr and the body to stdout; exits 1 on a\nstatus of 400 or more.\n\nflags:\n")
		fs.PrintDefaults()
	}
	headers := http.Header{}
	fs.Var(&headerFlag{headers}, "H", "request header \"Name: value\" (repeatable)")
	method := fs.String("X", http.MethodGet, "request method")
	timeout := fs.Duration("timeout", 5*time.Second, "request timeout")
	socks := fs.String("socks5", "", "send the request through this SOCKS5 proxy (host:port, such as ztunnel's 127.0.0.1:15080 in a captured pod); the URL's host name is resolved by the proxy")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "ambit-demo get: want exactly one URL")
		return 2
	}
	u := fs.Arg(0)
	if pu, err := url.Parse(u); err != nil || pu.Scheme != "http" || pu.Host == "" {
		fmt.Fprintf(stderr, "ambit-demo get: URL %q: want http://host[:port]/path\n", u)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, *method, u, nil)
	if err != nil {
		fmt.Fprintf(stderr, "ambit-demo get: %v\n", err)
		return 2
	}
	req.Header = headers
	client := http.DefaultClient
	if *socks != "" {
		// Go's SOCKS5 client sends a host name as it is, for the proxy
		// to resolve.
		client = &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "socks5", Host: *socks})}}
	}
	res, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "ambit-demo get: %v\n", err)
		return 1
	}
	defer res.Body.Close()
	fmt.Fprintf(stderr, "%s %s\n", res.Proto, res.Status)
	if _, err := io.Copy(stdout, res.Body); err != nil {
		fmt.Fprintf(stderr, "ambit-demo get: reading the body: %v\n", err)
		return 1
	}
	if res.StatusCode >= 400 {
		return 1
	}
	return 0
}
