package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestWorkloadDestination: a request addressed to a workload needs no
// route table: it is authorized with no service and forwarded to that
// endpoint as it is.
func TestWorkloadDestination(t *testing.T) {
	var got []string
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.Path)
		io.WriteString(w, "pod")
	}))
	defer backend.Close()
	addr := strings.TrimPrefix(backend.URL, "http://")
	var authzService []string
	var res []*Result
	p := &Proxy{
		Authorize: func(r *http.Request, service string, port uint32) AuthzDecision {
			authzService = append(authzService, service)
			return AuthzDecision{Allow: r.Method == http.MethodGet, Policy: "ns/get-only"}
		},
		OnResult: func(_ *http.Request, r *Result) { res = append(res, r) },
	}
	serve := func(method string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, "http://10.1.0.5/direct", nil)
		req = req.WithContext(WithWorkloadDestination(req.Context(), Endpoint{Address: addr, Workload: "ns/pod-1"}))
		w := httptest.NewRecorder()
		p.ServeHTTP(w, req)
		return w
	}
	if w := serve(http.MethodGet); w.Code != 200 || w.Body.String() != "pod" {
		t.Fatalf("GET: %d %q", w.Code, w.Body)
	}
	if w := serve(http.MethodPost); w.Code != 403 || !strings.Contains(w.Body.String(), "ns/get-only") {
		t.Fatalf("POST: %d %q", w.Code, w.Body)
	}
	if len(got) != 1 || got[0] != "GET /direct" {
		t.Fatalf("backend saw %q", got)
	}
	if len(authzService) != 2 || authzService[0] != "" {
		t.Fatalf("authorized for services %q, want none", authzService)
	}
	if r := res[0]; r.Workload != "ns/pod-1" || r.Endpoint != addr || r.Service != "" || r.Backend != "" || r.Code != 200 || r.Port == 0 {
		t.Fatalf("result %+v", r)
	}
	// Neither a service nor a workload destination: 404 NR.
	w := httptest.NewRecorder()
	p.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "http://x/", nil))
	if w.Code != 404 || res[2].FlagString() != FlagNoRoute {
		t.Fatalf("no destination: %d %s", w.Code, res[2].FlagString())
	}
}
