package telemetry

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
)

var timeField = regexp.MustCompile(`^\{"time":"([^"]+)",`)

// TestAccessWriterMatchesSlog: the access log written by SetAccessWriter
// is byte for byte what slog's JSONHandler writes, for requests and
// connections, including strings that need escaping.
func TestAccessWriterMatchesSlog(t *testing.T) {
	var viaSlog, direct bytes.Buffer
	a := New(nil, slog.New(slog.NewJSONHandler(&viaSlog, nil)).With("component", "access"))
	b := New(nil, nil)
	b.SetAccessWriter(&direct, "component", "access")

	paths := []string{"/bench/echo", `/q"uote\back`, "/ctl\x01\x1f\x7f\n\r\t", "/é/日本", "/bad\xff\xfeutf8", "/sep\u2028\u2029", "/<a>&b", ""}
	for i, path := range paths {
		r := httptest.NewRequest("POST", "/", nil)
		r.URL.Path = path
		res := &proxy.Result{
			Service: "bench/http", Port: 80, Route: "bench/http.0", Backend: "bench/http:80", Endpoint: "10.250.2.2:8080",
			Workload: "bench/server", Code: 200 + i, Attempts: i, BytesReceived: int64(1024 * i), BytesSent: -1,
			GRPCStatus: "0", Flags: []string{"URX", "UF"}[:i%3],
			Authz: proxy.AuthzDecision{Evaluated: i%2 == 0, Allow: i%4 == 0, Policy: "ns/" + path},
			Source: proxy.Source{
				Identity: identity.SPIFFEID{TrustDomain: "cluster.local", Namespace: "bench", ServiceAccount: "client"},
				Address:  netip.MustParseAddr("10.250.1.2"),
				Header:   http.Header{},
			},
			Duration: time.Duration(i) * 1234567 * time.Nanosecond,
		}
		if i == 3 {
			res.Source = proxy.Source{}
		}
		a.Observe(r, res)
		b.Observe(r, res)
		c := &proxy.ConnResult{Service: "bench/tcp", Port: 9000, Endpoint: path, Source: res.Source, Authz: res.Authz,
			Opened: i%2 == 1, BytesReceived: 7, BytesSent: int64(i), Duration: time.Second, Flags: []string{"", "UF"}[i%2]}
		a.ObserveConn(c, true)
		b.ObserveConn(c, true)
	}
	want, got := strings.SplitAfter(viaSlog.String(), "\n"), strings.SplitAfter(direct.String(), "\n")
	if len(want) != len(got) || len(got) != 2*len(paths)+1 {
		t.Fatalf("%d lines, slog wrote %d", len(got)-1, len(want)-1)
	}
	for i := range want[:len(want)-1] {
		m := timeField.FindStringSubmatch(got[i])
		if m == nil {
			t.Fatalf("line %d has no time first: %s", i, got[i])
		}
		if _, err := time.Parse(time.RFC3339Nano, m[1]); err != nil {
			t.Errorf("line %d: time %q: %v", i, m[1], err)
		}
		w, g := timeField.ReplaceAllString(want[i], ""), timeField.ReplaceAllString(got[i], "")
		if w != g {
			t.Errorf("line %d:\n got %s\nwant %s", i, g, w)
		}
	}
}

// TestAccessWriterOneWritePerLine: each line is one Write, so that a
// buffering writer never splits one.
func TestAccessWriterOneWritePerLine(t *testing.T) {
	var w countingWriter
	tel := New(nil, nil)
	tel.SetAccessWriter(&w, "component", "access")
	for range 3 {
		tel.Observe(httptest.NewRequest("GET", "/", nil), &proxy.Result{Service: "a/b", Code: 200})
	}
	if w.writes != 3 || w.lines != 3 {
		t.Fatalf("%d writes, %d lines", w.writes, w.lines)
	}
}

type countingWriter struct{ writes, lines int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	w.lines += bytes.Count(p, []byte("\n"))
	return len(p), nil
}

var _ io.Writer = (*countingWriter)(nil)
