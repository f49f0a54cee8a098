package tracing

import (
	"context"
	"net/http"
	"testing"
)

func TestEndpointValidation(t *testing.T) {
	for _, ep := range []string{"collector:4317", "http://collector:4317", "https://collector:4317", "HTTP://127.0.0.1:4317/"} {
		if _, err := endpointOptions(ep); err != nil {
			t.Errorf("%q: %v", ep, err)
		}
	}
	for _, ep := range []string{"collector", "ftp://collector:21", "a b:1", "collector/path"} {
		if _, err := endpointOptions(ep); err == nil {
			t.Errorf("%q accepted", ep)
		}
	}
	if _, err := New(context.Background(), Config{Endpoint: "127.0.0.1:4317"}); err == nil {
		t.Error("export without a service name accepted")
	}
	tr, err := New(context.Background(), Config{})
	if err != nil || tr.Exporting() {
		t.Fatalf("no endpoint: %v, exporting %v", err, tr.Exporting())
	}
	_ = tr.Shutdown(context.Background())
}

func TestFormatsOf(t *testing.T) {
	for _, c := range []struct {
		h    http.Header
		want int
	}{
		{http.Header{}, formatW3C},
		{http.Header{"Traceparent": {"x"}}, formatW3C},
		{http.Header{"B3": {"x"}}, formatB3Single},
		{http.Header{"X-B3-Traceid": {"x"}}, formatB3Multi},
		{http.Header{"Traceparent": {"x"}, "B3": {"y"}}, formatW3C | formatB3Single},
	} {
		if got := formatsOf(c.h); got != c.want {
			t.Errorf("formatsOf(%v) = %b, want %b", c.h, got, c.want)
		}
	}
}
