package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/websocket"
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
	wsMessage := fs.String("websocket", "", "instead of a GET, open a WebSocket to the URL (ws:// for its http://), send this message, print the answer and close")
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
	if *wsMessage != "" {
		if *socks != "" {
			fmt.Fprintln(stderr, "ambit-demo get: -websocket and -socks5 do not go together")
			return 2
		}
		return webSocketGet(u, *wsMessage, headers, *timeout, stdout, stderr)
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

// webSocketGet opens a WebSocket to u (http:// becomes ws://), sends msg,
// prints the handshake's status line to stderr (as get prints a status)
// and the first answer to stdout, and closes.
func webSocketGet(u, msg string, headers http.Header, timeout time.Duration, stdout, stderr io.Writer) int {
	cfg, err := websocket.NewConfig("ws"+strings.TrimPrefix(u, "http"), u)
	if err != nil {
		fmt.Fprintf(stderr, "ambit-demo get: %v\n", err)
		return 2
	}
	cfg.Header = headers
	cfg.Dialer = &net.Dialer{Timeout: timeout}
	ws, err := websocket.DialConfig(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "ambit-demo get: websocket %s: %v\n", u, err)
		return 1
	}
	defer ws.Close()
	fmt.Fprintln(stderr, "HTTP/1.1 101 Switching Protocols")
	_ = ws.SetDeadline(time.Now().Add(timeout))
	if err := websocket.Message.Send(ws, msg); err != nil {
		fmt.Fprintf(stderr, "ambit-demo get: websocket send: %v\n", err)
		return 1
	}
	var answer string
	if err := websocket.Message.Receive(ws, &answer); err != nil {
		fmt.Fprintf(stderr, "ambit-demo get: websocket receive: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, answer)
	return 0
}
