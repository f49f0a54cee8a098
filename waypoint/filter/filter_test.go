package filter

import (
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

func TestHeaderModifier(t *testing.T) {
	c, err := Compile([]*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_RequestHeaderModifier{
		RequestHeaderModifier: &configv1alpha1.HeaderModifier{
			Set:    map[string]string{"x-set": "s", "host": "other.example"},
			Add:    map[string]string{"X-ADD": "a", "x-set": "extra"},
			Remove: []string{"x-REMOVE"},
		}}}})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "http://svc/x", nil)
	r.Header.Set("X-Set", "old")
	r.Header.Add("X-Add", "first")
	r.Header.Set("X-Remove", "gone")
	for _, m := range c.Request {
		m.ApplyRequest(r)
	}
	if got := r.Header.Values("X-Set"); strings.Join(got, ",") != "s,extra" {
		t.Errorf("X-Set = %q", got)
	}
	if got := r.Header.Values("X-Add"); strings.Join(got, ",") != "first,a" {
		t.Errorf("X-Add = %q", got)
	}
	if r.Header.Get("X-Remove") != "" {
		t.Error("X-Remove kept")
	}
	if r.Host != "other.example" || r.Header.Get("Host") != "" {
		t.Errorf("Host %q, header %q", r.Host, r.Header.Get("Host"))
	}
}

func TestCompileErrors(t *testing.T) {
	for name, f := range map[string]*configv1alpha1.Filter{
		"empty":       {},
		"bad header":  {Kind: &configv1alpha1.Filter_RequestHeaderModifier{RequestHeaderModifier: &configv1alpha1.HeaderModifier{Set: map[string]string{"a b": "x"}}}},
		"bad value":   {Kind: &configv1alpha1.Filter_ResponseHeaderModifier{ResponseHeaderModifier: &configv1alpha1.HeaderModifier{Add: map[string]string{"a": "x\r\ny: z"}}}},
		"bad status":  {Kind: &configv1alpha1.Filter_RequestRedirect{RequestRedirect: &configv1alpha1.Redirect{StatusCode: 200}}},
		"bad scheme":  {Kind: &configv1alpha1.Filter_RequestRedirect{RequestRedirect: &configv1alpha1.Redirect{Scheme: "ftp"}}},
		"bad path":    {Kind: &configv1alpha1.Filter_UrlRewrite{UrlRewrite: &configv1alpha1.Rewrite{Path: &configv1alpha1.PathModifier{Kind: &configv1alpha1.PathModifier_ReplaceFullPath{ReplaceFullPath: "x"}}}}},
		"bad host":    {Kind: &configv1alpha1.Filter_UrlRewrite{UrlRewrite: &configv1alpha1.Rewrite{Hostname: "a/b"}}},
		"mirror":      {Kind: &configv1alpha1.Filter_RequestMirror{RequestMirror: &configv1alpha1.Mirror{Backend: &configv1alpha1.WeightedBackend{Port: 80}}}},
		"mirror pct":  {Kind: &configv1alpha1.Filter_RequestMirror{RequestMirror: &configv1alpha1.Mirror{Backend: &configv1alpha1.WeightedBackend{Service: "a/b", Port: 80}, Percent: 101}}},
		"fault pct":   {Kind: &configv1alpha1.Filter_Fault{Fault: &configv1alpha1.Fault{AbortHttpStatus: 503, AbortPercent: -1}}},
		"fault both":  {Kind: &configv1alpha1.Filter_Fault{Fault: &configv1alpha1.Fault{AbortHttpStatus: 503, AbortGrpcStatus: 2}}},
		"fault delay": {Kind: &configv1alpha1.Filter_Fault{Fault: &configv1alpha1.Fault{Delay: durationpb.New(-time.Second)}}},
	} {
		if _, err := Compile([]*configv1alpha1.Filter{f}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	redirect := &configv1alpha1.Filter{Kind: &configv1alpha1.Filter_RequestRedirect{RequestRedirect: &configv1alpha1.Redirect{}}}
	rewrite := &configv1alpha1.Filter{Kind: &configv1alpha1.Filter_UrlRewrite{UrlRewrite: &configv1alpha1.Rewrite{}}}
	if _, err := Compile([]*configv1alpha1.Filter{redirect, rewrite}); err == nil {
		t.Error("redirect with rewrite: no error")
	}
}

func TestPathModifierPrefix(t *testing.T) {
	// Gateway API's HTTPPathModifier table.
	for _, c := range []struct{ path, prefix, repl, want string }{
		{"/foo/bar", "/foo", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo", "/xyz/", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz/", "/xyz/bar"},
		{"/foo", "/foo", "/xyz", "/xyz"},
		{"/foo/", "/foo", "/xyz", "/xyz/"},
		{"/foo/bar", "/foo", "", "/bar"},
		{"/foo/", "/foo", "", "/"},
		{"/foo", "/foo", "", "/"},
		{"/foo/", "/foo", "/", "/"},
		{"/foo", "/foo", "/", "/"},
		{"/anything", "/", "/api", "/api/anything"},
	} {
		m := &PathModifier{Prefix: c.repl}
		if got := m.Apply(c.path, c.prefix); got != c.want {
			t.Errorf("%s prefix %s -> %q: got %s, want %s", c.path, c.prefix, c.repl, got, c.want)
		}
	}
	if got := (&PathModifier{Full: "/x", IsFull: true}).Apply("/a/b", "/a"); got != "/x" {
		t.Errorf("full: %s", got)
	}
}

func redirectOf(t *testing.T, r *configv1alpha1.Redirect) *Redirect {
	t.Helper()
	c, err := Compile([]*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_RequestRedirect{RequestRedirect: r}}})
	if err != nil {
		t.Fatal(err)
	}
	return c.Redirect
}

func TestRedirectLocation(t *testing.T) {
	full := func(p string) *configv1alpha1.PathModifier {
		return &configv1alpha1.PathModifier{Kind: &configv1alpha1.PathModifier_ReplaceFullPath{ReplaceFullPath: p}}
	}
	prefix := func(p string) *configv1alpha1.PathModifier {
		return &configv1alpha1.PathModifier{Kind: &configv1alpha1.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: p}}
	}
	for _, c := range []struct {
		name   string
		cfg    *configv1alpha1.Redirect
		url    string
		listen uint32
		want   string
		code   int
	}{
		{"defaults on port 80", &configv1alpha1.Redirect{}, "http://svc.ns/a?q=1", 80, "http://svc.ns/a?q=1", 302},
		{"listener port kept", &configv1alpha1.Redirect{}, "http://svc.ns:8080/a", 8080, "http://svc.ns:8080/a", 302},
		{"https scheme elides 443", &configv1alpha1.Redirect{Scheme: "https", StatusCode: 301}, "http://svc.ns:8080/a", 8080, "https://svc.ns/a", 301},
		{"http scheme elides 80", &configv1alpha1.Redirect{Scheme: "http"}, "http://svc.ns:8080/a", 8080, "http://svc.ns/a", 302},
		{"explicit port", &configv1alpha1.Redirect{Scheme: "https", Port: 8443}, "http://svc.ns/a", 80, "https://svc.ns:8443/a", 302},
		{"explicit 443 with https", &configv1alpha1.Redirect{Scheme: "https", Port: 443}, "http://svc.ns/a", 80, "https://svc.ns/a", 302},
		{"hostname", &configv1alpha1.Redirect{Hostname: "example.org", StatusCode: 308}, "http://svc.ns/a", 80, "http://example.org/a", 308},
		{"full path", &configv1alpha1.Redirect{Path: full("/new"), StatusCode: 303}, "http://svc.ns/old/x?k=v", 80, "http://svc.ns/new?k=v", 303},
		{"prefix path", &configv1alpha1.Redirect{Path: prefix("/v2"), StatusCode: 307}, "http://svc.ns/v1/items", 80, "http://svc.ns/v2/items", 307},
		{"ipv6 host", &configv1alpha1.Redirect{}, "http://[fd00::1]:8080/a", 8080, "http://[fd00::1]:8080/a", 302},
	} {
		rd := redirectOf(t, c.cfg)
		r := httptest.NewRequest("GET", c.url, nil)
		if got := rd.Location(r, "/v1", c.listen); got != c.want || rd.StatusCode != c.code {
			t.Errorf("%s: %s %d, want %s %d", c.name, got, rd.StatusCode, c.want, c.code)
		}
	}
}

func TestRewrite(t *testing.T) {
	c, err := Compile([]*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_UrlRewrite{UrlRewrite: &configv1alpha1.Rewrite{
		Hostname: "backend.internal",
		Path:     &configv1alpha1.PathModifier{Kind: &configv1alpha1.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: "/api/v2"}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "http://svc/api/v1/users?id=3", nil)
	c.Rewrite.Apply(r, "/api/v1")
	if r.Host != "backend.internal" || r.URL.Path != "/api/v2/users" || r.URL.RawQuery != "id=3" {
		t.Errorf("got host %s path %s query %s", r.Host, r.URL.Path, r.URL.RawQuery)
	}
}

func TestFaultDecidePercent(t *testing.T) {
	f := &Fault{Delay: time.Second, DelayPercent: 30, AbortHTTP: 503, AbortPercent: 10}
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 10000
	delays, aborts := 0, 0
	for range n {
		d := f.Decide(rng.Float64)
		if d.Delay > 0 {
			delays++
		}
		if d.Abort {
			aborts++
		}
	}
	// Binomial: 4 standard deviations (sqrt(n p (1-p)) = 46 and 30).
	if delays < 3000-184 || delays > 3000+184 || aborts < 1000-120 || aborts > 1000+120 {
		t.Errorf("delays %d, aborts %d of %d", delays, aborts, n)
	}
	if d := (&Fault{Delay: time.Second, DelayPercent: 100, AbortGRPC: 14, AbortPercent: 100}).Decide(nil); d.Delay != time.Second || !d.Abort {
		t.Errorf("100%%: %+v", d)
	}
	if d := (&Fault{Delay: time.Second, AbortHTTP: 500}).Decide(nil); d.Delay != 0 || d.Abort {
		t.Errorf("0%%: %+v", d)
	}
}

func TestFaultWriteAbort(t *testing.T) {
	w := httptest.NewRecorder()
	if code := (&Fault{AbortHTTP: 418}).WriteAbort(w); code != 418 || w.Code != 418 {
		t.Errorf("http abort: %d %d", code, w.Code)
	}
	w = httptest.NewRecorder()
	if code := (&Fault{AbortGRPC: 14}).WriteAbort(w); code != 200 || w.Header().Get("Grpc-Status") != "14" ||
		w.Header().Get("Content-Type") != "application/grpc" {
		t.Errorf("grpc abort: %d %v", code, w.Header())
	}
}

func TestHeaderModifierResponse(t *testing.T) {
	c, err := Compile([]*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_ResponseHeaderModifier{
		ResponseHeaderModifier: &configv1alpha1.HeaderModifier{Set: map[string]string{"x-a": "1"}, Remove: []string{"server"}}}}})
	if err != nil || len(c.Response) != 1 || c.Empty() {
		t.Fatal(err, c)
	}
	h := http.Header{"Server": {"x"}}
	c.Response[0].Apply(h)
	if h.Get("X-A") != "1" || h.Get("Server") != "" {
		t.Errorf("%v", h)
	}
	if !(*Chain)(nil).Empty() {
		t.Error("nil chain not empty")
	}
}

func FuzzPathModifier(f *testing.F) {
	f.Add("/foo/bar", "/foo", "/xyz")
	f.Add("/", "/", "")
	f.Add("", "/a/", "/")
	f.Fuzz(func(t *testing.T, path, prefix, repl string) {
		got := (&PathModifier{Prefix: repl}).Apply(path, prefix)
		if !strings.HasPrefix(got, "/") {
			t.Errorf("Apply(%q, %q) with %q = %q: not absolute", path, prefix, repl, got)
		}
	})
}
