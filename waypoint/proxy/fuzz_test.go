package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/waypoint/route"
)

// FuzzServeHTTP drives the whole engine (matching, redirect, rewrite,
// header filters, fault, pick) with arbitrary requests; it must answer,
// never panic. No endpoint exists, so forwarded requests answer 503.
func FuzzServeHTTP(f *testing.F) {
	prefixRewrite := &configv1alpha1.PathModifier{Kind: &configv1alpha1.PathModifier_ReplacePrefixMatch{ReplacePrefixMatch: "/new"}}
	tb, err := route.Compile(&configv1alpha1.WaypointConfig{Services: []*configv1alpha1.ServiceRoutes{{Service: "ns/svc", Port: 80,
		Rules: []*configv1alpha1.RouteRule{
			{Route: "redirect", Match: pathPrefix("/r"), Filters: []*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_RequestRedirect{
				RequestRedirect: &configv1alpha1.Redirect{Path: prefixRewrite}}}}},
			{Route: "rewrite", Match: &configv1alpha1.RouteMatch{Path: sm(configv1alpha1.StringMatch_TYPE_PREFIX, "/w"),
				Headers: []*configv1alpha1.HeaderMatch{{Name: "x-a", Value: sm(configv1alpha1.StringMatch_TYPE_REGEX, ".*b.*")}}},
				Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1), {Weight: 1}},
				Filters: []*configv1alpha1.Filter{
					{Kind: &configv1alpha1.Filter_UrlRewrite{UrlRewrite: &configv1alpha1.Rewrite{Hostname: "h", Path: prefixRewrite}}},
					{Kind: &configv1alpha1.Filter_RequestHeaderModifier{RequestHeaderModifier: &configv1alpha1.HeaderModifier{
						Set: map[string]string{"host": "x"}, Remove: []string{"x-a"}}}}}},
			{Route: "fault", Match: pathPrefix("/"), Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1)},
				Filters: []*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_Fault{Fault: &configv1alpha1.Fault{AbortHttpStatus: 503, AbortPercent: 50}}}}},
		}}}})
	if err != nil {
		f.Fatal(err)
	}
	p := &Proxy{Table: func() *route.Table { return tb }}
	f.Add("GET", "/r/x", "a=1", "svc:80", "X-A", "abc")
	f.Add("POST", "/w/deep/path", "", "[::1]:80", "Connection", "x-a")
	f.Add("", "", "%zz", "", "", "")
	f.Fuzz(func(t *testing.T, method, path, query, host, name, value string) {
		req := &http.Request{Method: method, URL: &url.URL{Path: path, RawQuery: query}, Host: host, Proto: "HTTP/1.1",
			ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, Body: http.NoBody}
		if name != "" {
			req.Header[name] = []string{value}
		}
		req = req.WithContext(WithDestination(context.Background(), "ns/svc", 80))
		w := httptest.NewRecorder()
		p.ServeHTTP(w, req)
		if w.Code < 200 || w.Code > 599 {
			t.Errorf("status %d", w.Code)
		}
		if strings.HasPrefix(path, "/r") && w.Code == 302 && w.Header().Get("Location") == "" {
			t.Error("redirect without Location")
		}
	})
}
