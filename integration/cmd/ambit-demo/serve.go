package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/websocket"
)

// Response is what `serve` answers: who answered, what it received and what
// its downstream services answered.
type Response struct {
	Service   string            `json:"service"`
	Version   string            `json:"version"`
	Pod       string            `json:"pod"`
	Namespace string            `json:"namespace"`
	Path      string            `json:"path"`
	Method    string            `json:"method"`
	Proto     string            `json:"proto"`
	Host      string            `json:"host"`
	Headers   map[string]string `json:"headers"`
	// Remote is the client's address as the server saw it (ip:port).
	Remote string `json:"remote"`
	// Status is the HTTP status of this answer.
	Status int `json:"status"`
	// Upstreams are the answers of the -call services, in order.
	Upstreams []Upstream `json:"upstreams,omitempty"`
}

// Upstream is one downstream call's outcome.
type Upstream struct {
	URL    string `json:"url"`
	Status int    `json:"status,omitempty"`
	// Error is set when the call failed or the answer was not a Response.
	Error    string    `json:"error,omitempty"`
	Response *Response `json:"response,omitempty"`
}

// defaultPropagate are the headers passed on to downstream calls: trace
// context, request ids and the demo's routing header.
const defaultPropagate = "traceparent,tracestate,baggage,b3,x-b3-traceid,x-b3-spanid,x-b3-parentspanid,x-b3-sampled,x-b3-flags,x-request-id,x-version,x-user"

type serveConfig struct {
	listen                     string
	service, version, pod, ns  string
	calls                      []string
	failRate                   float64
	status                     int
	latency                    time.Duration
	callTimeout, shutdownGrace time.Duration
	connMaxAge                 time.Duration
	propagate                  []string
}

func parseServe(args []string, out io.Writer) (*serveConfig, error) {
	fs := flag.NewFlagSet("ambit-demo serve", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: ambit-demo serve [flags]\n\nAnswers every path but /healthz with JSON {service, version, pod, namespace,\npath, method, proto, host, headers, remote, status, upstreams}, over HTTP/1.1 and h2c.\n\nflags:\n")
		fs.PrintDefaults()
	}
	hostname, _ := os.Hostname()
	c := &serveConfig{}
	fs.StringVar(&c.listen, "listen", ":8080", "address to listen on")
	fs.StringVar(&c.service, "service", envOr("SERVICE_NAME", "demo"), "service name reported (default $SERVICE_NAME or demo)")
	fs.StringVar(&c.version, "version", envOr("SERVICE_VERSION", "v1"), "version reported (default $SERVICE_VERSION or v1)")
	fs.StringVar(&c.pod, "pod", envOr("POD_NAME", hostname), "pod name reported (default $POD_NAME or the host name)")
	fs.StringVar(&c.ns, "namespace", envOr("POD_NAMESPACE", ""), "namespace reported (default $POD_NAMESPACE)")
	calls := fs.String("call", "", "comma-separated URLs to GET for every request; their answers are included")
	fs.Float64Var(&c.failRate, "fail-rate", 0, "fraction of requests, 0 to 1, answered 503")
	fs.IntVar(&c.status, "status", 0, "answer every request with this HTTP status (0: 200, or 502 when a -call fails)")
	fs.DurationVar(&c.latency, "latency", 0, "delay added before answering")
	fs.DurationVar(&c.callTimeout, "call-timeout", 2*time.Second, "timeout of each downstream call")
	fs.DurationVar(&c.connMaxAge, "conn-max-age", defaultConnMaxAge, "close the downstream calls' idle connections this often, so that a mesh change (it applies to new connections) shows within seconds; 0 keeps them")
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", 5*time.Second, "on SIGTERM, how long in-flight requests may finish")
	propagate := fs.String("propagate", defaultPropagate, "comma-separated request headers passed on to -call services")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.failRate < 0 || c.failRate > 1 {
		return nil, fmt.Errorf("-fail-rate %v: want a fraction between 0 and 1", c.failRate)
	}
	if c.status != 0 && (c.status < 100 || c.status > 599) {
		return nil, fmt.Errorf("-status %d: want an HTTP status between 100 and 599", c.status)
	}
	if c.service == "" {
		return nil, errors.New("-service is empty")
	}
	for _, u := range splitList(*calls) {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return nil, fmt.Errorf("-call %q: want an http:// URL", u)
		}
		c.calls = append(c.calls, u)
	}
	for _, h := range splitList(*propagate) {
		c.propagate = append(c.propagate, http.CanonicalHeaderKey(h))
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

type demoServer struct {
	cfg      *serveConfig
	log      *slog.Logger
	client   *http.Client
	draining atomic.Bool
	mu       sync.Mutex
	rng      *rand.Rand
}

func newDemoServer(cfg *serveConfig, log *slog.Logger) *demoServer {
	return &demoServer{
		cfg: cfg, log: log,
		client: &http.Client{Timeout: cfg.callTimeout, Transport: &http.Transport{
			MaxIdleConnsPerHost: 16, IdleConnTimeout: 30 * time.Second,
		}},
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1)),
	}
}

func (s *demoServer) fail() bool {
	if s.cfg.failRate <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.Float64() < s.cfg.failRate
}

func (s *demoServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		s.serveWebSocket(w, r)
		return
	}
	if r.URL.Path == "/healthz" {
		if s.draining.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	resp := Response{
		Service: s.cfg.service, Version: s.cfg.version, Pod: s.cfg.pod, Namespace: s.cfg.ns,
		Path: r.URL.Path, Method: r.Method, Proto: r.Proto, Host: r.Host,
		Headers: map[string]string{}, Remote: r.RemoteAddr, Status: http.StatusOK,
	}
	for k, v := range r.Header {
		resp.Headers[strings.ToLower(k)] = strings.Join(v, ", ")
	}
	if s.cfg.latency > 0 {
		select {
		case <-time.After(s.cfg.latency):
		case <-r.Context().Done():
			return
		}
	}
	upstreamFailed := false
	for _, u := range s.cfg.calls {
		up := s.call(r, u)
		if up.Error != "" || up.Status >= 500 {
			upstreamFailed = true
		}
		resp.Upstreams = append(resp.Upstreams, up)
	}
	switch {
	case s.cfg.status != 0:
		resp.Status = s.cfg.status
	case s.fail():
		resp.Status = http.StatusServiceUnavailable
	case upstreamFailed:
		resp.Status = http.StatusBadGateway
	}
	body, err := json.Marshal(resp)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Service", s.cfg.service)
	w.Header().Set("X-Version", s.cfg.version)
	w.WriteHeader(resp.Status)
	_, _ = w.Write(append(body, '\n'))
}

// call GETs u, passing on the propagated headers of r.
func (s *demoServer) call(r *http.Request, u string) Upstream {
	up := Upstream{URL: u}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u, nil)
	if err != nil {
		up.Error = err.Error()
		return up
	}
	for _, h := range s.cfg.propagate {
		for _, v := range r.Header.Values(h) {
			req.Header.Add(h, v)
		}
	}
	res, err := s.client.Do(req)
	if err != nil {
		up.Error = err.Error()
		return up
	}
	defer res.Body.Close()
	up.Status = res.StatusCode
	body, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		up.Error = err.Error()
		return up
	}
	var inner Response
	if err := json.Unmarshal(body, &inner); err != nil || inner.Service == "" {
		up.Error = fmt.Sprintf("answer is not an ambit-demo response: %.100q", body)
		return up
	}
	up.Response = &inner
	return up
}

// serve runs the demo server on ln until ctx ends, then drains.
func (s *demoServer) serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("serving", "address", ln.Addr().String(), "service", s.cfg.service, "version", s.cfg.version,
		"calls", strings.Join(s.cfg.calls, ","), "fail_rate", s.cfg.failRate, "status", s.cfg.status)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.draining.Store(true)
	s.log.Info("shutting down", "grace", s.cfg.shutdownGrace.String())
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

func serveCommand(ctx context.Context, args []string, stderr io.Writer, log *slog.Logger) int {
	cfg, err := parseServe(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ambit-demo serve: %v\n", err)
		return 2
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		fmt.Fprintf(stderr, "ambit-demo serve: %v\n", err)
		return 1
	}
	s := newDemoServer(cfg, log)
	go recycleIdle(ctx, s.client.Transport.(*http.Transport), cfg.connMaxAge)
	if err := s.serve(ctx, ln); err != nil {
		fmt.Fprintf(stderr, "ambit-demo serve: %v\n", err)
		return 1
	}
	return 0
}

// versions lists "service@version" for r and every upstream answer in it.
func versions(r *Response) []string {
	if r == nil {
		return nil
	}
	out := []string{r.Service + "@" + r.Version}
	for _, u := range r.Upstreams {
		out = append(out, versions(u.Response)...)
	}
	return out
}

// formatCounts renders a count map as "k=v k=v" in key order.
func formatCounts(m map[string]uint64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// serveWebSocket answers a WebSocket handshake (RFC 6455) and then each
// message with "<service> <version>: <message>" until the client closes.
// Any origin is accepted: the demo has no browser clients to protect.
func (s *demoServer) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	websocket.Server{
		Handshake: func(*websocket.Config, *http.Request) error { return nil },
		Handler: func(ws *websocket.Conn) {
			defer ws.Close()
			for {
				var msg string
				if err := websocket.Message.Receive(ws, &msg); err != nil {
					return
				}
				if err := websocket.Message.Send(ws, s.cfg.service+" "+s.cfg.version+": "+msg); err != nil {
					return
				}
			}
		},
	}.ServeHTTP(w, r)
}
