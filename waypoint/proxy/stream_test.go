package proxy

import (
	"bufio"
	"io"
	"net/http"
	"testing"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

func TestResponseStreams(t *testing.T) {
	finish := make(chan struct{})
	b := newBackend(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		<-finish
		_, _ = io.WriteString(w, "second\n")
	})
	h := newHarness(t, compile(t, &configv1alpha1.RouteRule{Route: "r", Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1)}}),
		resolver{key("ns/b"): {b.addr()}})
	resp, err := h1Client.Get(h.server.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	got := make(chan string, 1)
	go func() {
		line, _ := rd.ReadString('\n')
		got <- line
	}()
	select {
	case line := <-got:
		if line != "first\n" {
			t.Errorf("first line %q", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first chunk was not streamed before the backend finished")
	}
	close(finish)
	if rest, _ := io.ReadAll(rd); string(rest) != "second\n" {
		t.Errorf("rest %q", rest)
	}
}

func TestUpstreamBreakTruncates(t *testing.T) {
	b := newBackend(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "100")
		_, _ = io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the backend breaks the connection
	})
	h := newHarness(t, compile(t, &configv1alpha1.RouteRule{Route: "r", Backends: []*configv1alpha1.WeightedBackend{be("ns/b", 1)}}),
		resolver{key("ns/b"): {b.addr()}})
	// The client sees an error: at once (the headers were still buffered)
	// or while reading the body; never a complete answer.
	if resp, err := h1Client.Get(h.server.URL + "/"); err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Error("a broken upstream body reached the client as complete")
		}
	}
	if res := h.lastResult(); res.FlagString() != FlagUpstreamReset || res.Code != 200 {
		t.Errorf("result %+v", res)
	}
}
