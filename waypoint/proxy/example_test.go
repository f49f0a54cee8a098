package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/waypoint/proxy"
	"github.com/ambit-mesh/ambit/waypoint/route"
)

// A Proxy routes requests for one service port to a backend's endpoints.
func Example() {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.URL.Path, r.Header.Get("X-Via"))
	}))
	defer backend.Close()

	table, err := route.Compile(&configv1alpha1.WaypointConfig{Services: []*configv1alpha1.ServiceRoutes{{
		Service: "shop/cart", Port: 80,
		Rules: []*configv1alpha1.RouteRule{{
			Route:    "HTTPRoute/shop/cart/0",
			Match:    &configv1alpha1.RouteMatch{Path: &configv1alpha1.StringMatch{Type: configv1alpha1.StringMatch_TYPE_PREFIX, Value: "/v1"}},
			Backends: []*configv1alpha1.WeightedBackend{{Service: "shop/cart-v2", Port: 80, Weight: 1}},
			Filters: []*configv1alpha1.Filter{{Kind: &configv1alpha1.Filter_RequestHeaderModifier{
				RequestHeaderModifier: &configv1alpha1.HeaderModifier{Set: map[string]string{"x-via": "waypoint"}}}}},
		}},
	}}})
	if err != nil {
		fmt.Println(err)
		return
	}
	p := &proxy.Proxy{
		Table: func() *route.Table { return table },
		Resolver: proxy.ResolverFunc(func(_ context.Context, service string, port uint32) []proxy.Endpoint {
			return []proxy.Endpoint{{Address: strings.TrimPrefix(backend.URL, "http://")}}
		}),
		OnResult: func(_ *http.Request, r *proxy.Result) {
			fmt.Println(r.Route, r.Backend, r.Code, r.Attempts, r.FlagString())
		},
	}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The HBONE listener sets the destination from the tunnel's authority.
		p.ServeHTTP(w, r.WithContext(proxy.WithDestination(r.Context(), "shop/cart", 80)))
	}))
	defer front.Close()

	resp, err := http.Get(front.URL + "/v1/items")
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, string(body))
	// Output:
	// HTTPRoute/shop/cart/0 shop/cart-v2:80 200 1 -
	// 200 /v1/items waypoint
}
