//go:build netns

package redirecttest

import (
	"context"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// TestNoLeaks repeats every helper and checks that goroutines and file
// descriptors come back to where they were.
func TestNoLeaks(t *testing.T) {
	ctx := context.Background()
	_, a, b := lab(t)
	listenIn(t, b.Do, ":8080", "app-b")
	dst := netip.AddrPortFrom(b.IP, appPort)

	cycle := func() {
		ns, err := redirect.OpenNetns(a.NetnsPath())
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		install(t, ns, redirect.Config{})
		if _, err := redirect.Rules(ctx, ns); err != nil {
			t.Fatal(err)
		}
		ls, err := ns.ListenAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := ls.Close(); err != nil {
			t.Fatal(err)
		}
		c, err := ns.Dialer().DialContext(ctx, "tcp", dst.String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := readReply(c); err != nil {
			t.Fatal(err)
		}
		if err := redirect.Remove(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	cycle() // warm up lazily created runtime state
	time.Sleep(50 * time.Millisecond)
	g0, f0 := runtime.NumGoroutine(), openFDs(t)
	for range 30 {
		cycle()
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		g, f := runtime.NumGoroutine(), openFDs(t)
		if g <= g0 && f <= f0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30 cycles: %d goroutines (was %d), %d fds (was %d)", g, g0, f, f0)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
