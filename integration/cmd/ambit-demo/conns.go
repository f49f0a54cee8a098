package main

import (
	"context"
	"net/http"
	"time"
)

// defaultConnMaxAge is how often the demo's clients (serve's calls, load)
// drop their idle connections. A mesh changes the path of new connections
// only (a waypoint, a route, a policy: a connection that exists keeps the
// path it was opened on, in Ambit as in Istio's ambient mode), and a client
// sending a few requests a second keeps its connections for ever; with
// this, such a change reaches the demo's traffic within seconds, as it does
// for applications that limit their connections' age.
const defaultConnMaxAge = 10 * time.Second

// recycleIdle closes tr's idle connections every d until ctx ends; d <= 0
// keeps them. A connection in use is closed the next time it is idle.
func recycleIdle(ctx context.Context, tr *http.Transport, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			tr.CloseIdleConnections()
		}
	}
}
