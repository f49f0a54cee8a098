package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestRecycleIdle: the client's idle connection is closed on the tick, so
// the next request opens a new one; with 0 the connection is kept.
func TestRecycleIdle(t *testing.T) {
	for _, d := range []time.Duration{50 * time.Millisecond, 0} {
		var conns atomic.Int32
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
		srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				conns.Add(1)
			}
		}
		srv.Start()
		tr := &http.Transport{}
		go recycleIdle(t.Context(), tr, d)
		c := &http.Client{Transport: tr}
		for range 2 {
			resp, err := c.Get(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			time.Sleep(150 * time.Millisecond)
		}
		want := int32(2)
		if d == 0 {
			want = 1
		}
		if got := conns.Load(); got != want {
			t.Errorf("conn-max-age %v: %d connections for two requests 150 ms apart, want %d", d, got, want)
		}
		tr.CloseIdleConnections()
		srv.Close()
	}
}
