package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type loadConfig struct {
	urls          []string
	qps           float64
	duration      time.Duration
	timeout       time.Duration
	connMaxAge    time.Duration
	report        time.Duration
	metricsListen string
	headers       http.Header
	h2c           bool
	concurrency   int
}

// headerFlag collects repeated -H "Name: value" flags.
type headerFlag struct{ h http.Header }

func (f *headerFlag) String() string { return "" }

func (f *headerFlag) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if !ok || name == "" || strings.ContainsAny(name, " \t") {
		return fmt.Errorf("header %q: want \"Name: value\"", s)
	}
	f.h.Add(name, strings.TrimSpace(value))
	return nil
}

func parseLoad(args []string, out io.Writer) (*loadConfig, error) {
	fs := flag.NewFlagSet("ambit-demo load", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: ambit-demo load [flags] URL...\n\nSends GET requests at a constant rate, round-robin over the URLs, forever or for\n-duration. Logs a summary every -report (requests per status code and per\nservice@version seen in the answers) and serves Prometheus metrics.\n\nflags:\n")
		fs.PrintDefaults()
	}
	c := &loadConfig{headers: http.Header{}}
	fs.Float64Var(&c.qps, "qps", 5, "requests per second, over all URLs")
	fs.DurationVar(&c.duration, "duration", 0, "stop after this long (0: until SIGTERM)")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Second, "timeout of each request")
	fs.DurationVar(&c.connMaxAge, "conn-max-age", defaultConnMaxAge, "close idle connections this often, so that a mesh change (it applies to new connections) shows within seconds; 0 keeps them")
	fs.DurationVar(&c.report, "report", 10*time.Second, "interval of the summary log line")
	fs.StringVar(&c.metricsListen, "metrics-listen", ":9090", "address of the /metrics endpoint (empty: none)")
	fs.BoolVar(&c.h2c, "h2c", false, "speak HTTP/2 without TLS (h2c prior knowledge) instead of HTTP/1.1")
	fs.IntVar(&c.concurrency, "concurrency", 64, "most requests in flight; a tick that finds them all busy is counted as dropped")
	urls := fs.String("url", "", "comma-separated URLs (in addition to the arguments)")
	fs.Var(&headerFlag{c.headers}, "H", "request header \"Name: value\" (repeatable)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	for _, u := range append(splitList(*urls), fs.Args()...) {
		pu, err := url.Parse(u)
		if err != nil || pu.Scheme != "http" || pu.Host == "" {
			return nil, fmt.Errorf("URL %q: want http://host[:port]/path", u)
		}
		c.urls = append(c.urls, u)
	}
	if len(c.urls) == 0 {
		return nil, errors.New("no URL to send to (ambit-demo load [flags] URL...)")
	}
	if c.qps <= 0 || c.qps > 100000 {
		return nil, fmt.Errorf("-qps %v: want more than 0 and at most 100000", c.qps)
	}
	if c.duration < 0 || c.timeout <= 0 || c.report <= 0 {
		return nil, errors.New("-duration must not be negative, -timeout and -report must be positive")
	}
	if c.concurrency < 1 {
		return nil, fmt.Errorf("-concurrency %d: want at least 1", c.concurrency)
	}
	return c, nil
}

// counts are the outcomes of a period.
type counts struct {
	requests, dropped uint64
	codes             map[string]uint64 // status code, or "error"
	versions          map[string]uint64 // service@version seen in answers
}

func newCounts() counts {
	return counts{codes: map[string]uint64{}, versions: map[string]uint64{}}
}

type loader struct {
	cfg    *loadConfig
	log    *slog.Logger
	client *http.Client

	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	seen     *prometheus.CounterVec
	dropped  prometheus.Counter
	latency  *prometheus.HistogramVec

	mu            sync.Mutex
	window, total counts
}

func newLoader(cfg *loadConfig, log *slog.Logger) *loader {
	tr := &http.Transport{MaxIdleConnsPerHost: cfg.concurrency, IdleConnTimeout: 30 * time.Second, Protocols: new(http.Protocols)}
	if cfg.h2c {
		tr.Protocols.SetUnencryptedHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	l := &loader{
		cfg: cfg, log: log,
		client: &http.Client{Timeout: cfg.timeout, Transport: tr},
		reg:    prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_demo_load_requests_total",
			Help: "Requests sent, by URL and response status code (\"error\" when no response came).",
		}, []string{"url", "code"}),
		seen: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ambit_demo_load_responses_total",
			Help: "Answers seen per service and version, counting every service in an answer's call chain.",
		}, []string{"service", "version"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ambit_demo_load_dropped_total",
			Help: "Ticks skipped because -concurrency requests were already in flight.",
		}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ambit_demo_load_request_duration_seconds",
			Help:    "Time to a complete response, by URL.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"url"}),
		window: newCounts(), total: newCounts(),
	}
	l.reg.MustRegister(l.requests, l.seen, l.dropped, l.latency)
	return l
}

// metricsHandler serves /metrics.
func (l *loader) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(l.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	return mux
}

// one sends one request to u and records the outcome.
func (l *loader) one(ctx context.Context, u string) {
	start := time.Now()
	code, vers := "error", []string(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err == nil {
		for k, v := range l.cfg.headers {
			req.Header[k] = v
		}
		var res *http.Response
		res, err = l.client.Do(req)
		if err == nil {
			body, rerr := io.ReadAll(io.LimitReader(res.Body, 4<<20))
			_ = res.Body.Close()
			if rerr == nil {
				code = strconv.Itoa(res.StatusCode)
				var r Response
				if json.Unmarshal(body, &r) == nil && r.Service != "" {
					vers = versions(&r)
				}
			}
		}
	}
	if ctx.Err() != nil && code == "error" {
		return // stopping: an interrupted request is not an outcome
	}
	l.latency.WithLabelValues(u).Observe(time.Since(start).Seconds())
	l.requests.WithLabelValues(u, code).Inc()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range []*counts{&l.window, &l.total} {
		c.requests++
		c.codes[code]++
		for _, v := range vers {
			c.versions[v]++
		}
	}
	for _, v := range vers {
		service, ver, _ := strings.Cut(v, "@")
		l.seen.WithLabelValues(service, ver).Inc()
	}
}

func (l *loader) drop() {
	l.dropped.Inc()
	l.mu.Lock()
	l.window.dropped++
	l.total.dropped++
	l.mu.Unlock()
}

func (l *loader) summary(msg string, period time.Duration, reset bool) {
	l.mu.Lock()
	c := l.window
	if !reset {
		c = l.total
	} else {
		l.window = newCounts()
	}
	l.mu.Unlock()
	l.log.Info(msg, "period", period.Round(time.Millisecond).String(), "requests", c.requests,
		"dropped", c.dropped, "codes", formatCounts(c.codes), "versions", formatCounts(c.versions))
}

// totals returns a copy of the counts since the start.
func (l *loader) totals() counts {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := newCounts()
	c.requests, c.dropped = l.total.requests, l.total.dropped
	for k, v := range l.total.codes {
		c.codes[k] = v
	}
	for k, v := range l.total.versions {
		c.versions[k] = v
	}
	return c
}

// run sends at the configured rate until ctx ends or -duration passes.
func (l *loader) run(ctx context.Context) {
	if l.cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.cfg.duration)
		defer cancel()
	}
	l.log.Info("sending", "urls", strings.Join(l.cfg.urls, ","), "qps", l.cfg.qps, "duration", l.cfg.duration.String())
	start := time.Now()
	interval := time.Duration(float64(time.Second) / l.cfg.qps)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	report := time.NewTicker(l.cfg.report)
	defer report.Stop()
	lastReport := start
	sem := make(chan struct{}, l.cfg.concurrency)
	var wg sync.WaitGroup
	next := 0
	fire := func() {
		select {
		case sem <- struct{}{}:
		default:
			l.drop()
			return
		}
		u := l.cfg.urls[next%len(l.cfg.urls)]
		next++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			l.one(ctx, u)
		}()
	}
	fire()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			l.summary("load done", time.Since(start), false)
			return
		case <-tick.C:
			fire()
		case now := <-report.C:
			l.summary("load summary", now.Sub(lastReport), true)
			lastReport = now
		}
	}
}

func loadCommand(ctx context.Context, args []string, stderr io.Writer, log *slog.Logger) int {
	cfg, err := parseLoad(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ambit-demo load: %v\n", err)
		return 2
	}
	l := newLoader(cfg, log)
	go recycleIdle(ctx, l.client.Transport.(*http.Transport), cfg.connMaxAge)
	if cfg.metricsListen != "" {
		ln, err := net.Listen("tcp", cfg.metricsListen)
		if err != nil {
			fmt.Fprintf(stderr, "ambit-demo load: metrics: %v\n", err)
			return 1
		}
		srv := &http.Server{Handler: l.metricsHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.Info("metrics", "address", "http://"+ln.Addr().String()+"/metrics")
	}
	l.run(ctx)
	return 0
}
