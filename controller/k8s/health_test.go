package k8s

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/ambit-mesh/ambit/controller/pipeline"
	"github.com/ambit-mesh/ambit/controller/translate"
)

type nopPublisher struct{}

func (nopPublisher) Publish(*translate.Output) {}

// fakeDiscovery is just enough of an apiserver for the manager to be built:
// discovery of apps/v1 Deployments and v1 ConfigMaps (the kinds whose cache
// is label-filtered). Everything else is 404, so the caches
// never sync.
func fakeDiscovery(t *testing.T) *httptest.Server {
	t.Helper()
	reply := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/api", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, metav1.APIVersions{TypeMeta: metav1.TypeMeta{Kind: "APIVersions"}, Versions: []string{"v1"}})
	})
	mux.HandleFunc("/apis", func(w http.ResponseWriter, _ *http.Request) {
		gv := metav1.GroupVersionForDiscovery{GroupVersion: "apps/v1", Version: "v1"}
		reply(w, metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"},
			Groups: []metav1.APIGroup{{Name: "apps", Versions: []metav1.GroupVersionForDiscovery{gv}, PreferredVersion: gv}}})
	})
	mux.HandleFunc("/api/v1", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: "v1",
			APIResources: []metav1.APIResource{{Name: "configmaps", Namespaced: true, Kind: "ConfigMap",
				Verbs: metav1.Verbs{"get", "list", "watch"}}}})
	})
	mux.HandleFunc("/apis/apps/v1", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: "apps/v1",
			APIResources: []metav1.APIResource{{Name: "deployments", Namespaced: true, Kind: "Deployment",
				Verbs: metav1.Verbs{"get", "list", "watch"}}}})
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestHealthReadinessAndMetrics runs the manager with its health and
// metrics listeners: /healthz answers at once, /readyz only once a first
// translation was published, and /metrics carries Ambit's metrics.
func TestHealthReadinessAndMetrics(t *testing.T) {
	api := fakeDiscovery(t)
	pipe := pipeline.New(translate.Translate, translate.Options{}, nopPublisher{}, slog.New(slog.DiscardHandler))
	health, metrics := freeAddr(t), freeAddr(t)
	ctl, err := New(&rest.Config{Host: api.URL}, Options{Pipeline: pipe, HealthAddress: health, MetricsAddress: metrics,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = ctl.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	wait := func(url string, want int) string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			code, body := get(url)
			if code == want {
				return body
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: status %d, want %d: %s", url, code, want, body)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait("http://"+health+"/healthz", http.StatusOK)
	if code, body := get("http://" + health + "/readyz"); code != http.StatusInternalServerError {
		t.Errorf("/readyz before any translation: %d %s, want 500", code, body)
	}
	if _, err := pipe.Run(t.Context(), translate.Input{}); err != nil {
		t.Fatal(err)
	}
	wait("http://"+health+"/readyz", http.StatusOK)

	body := wait("http://"+metrics+"/metrics", http.StatusOK)
	for _, name := range []string{"ambit_controller_translations_total", "ambit_controller_translate_duration_seconds",
		"ambit_controller_xds_publish_duration_seconds", "ambit_controller_ca_sign_duration_seconds"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}
