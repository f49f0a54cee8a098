package dnstest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
)

// TestServe resolves through the server with Go's resolver over TCP.
func TestServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(ln, map[string]netip.Addr{
		"four.example.": netip.MustParseAddr("192.0.2.7"),
		"six.example.":  netip.MustParseAddr("2001:db8::7"),
	})
	defer s.Close()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", s.Addr.String())
	}}
	for name, want := range map[string]string{"four.example.": "192.0.2.7", "six.example.": "2001:db8::7"} {
		got, err := r.LookupNetIP(t.Context(), "ip", name)
		if err != nil || !slices.Equal(got, []netip.Addr{netip.MustParseAddr(want)}) {
			t.Errorf("%s: %v, %v; want %s", name, got, err, want)
		}
	}
	_, err = r.LookupNetIP(t.Context(), "ip4", "nosuch.example.")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsNotFound {
		t.Errorf("nosuch.example.: %v, want not found", err)
	}
	if !slices.Contains(s.Asked(), "four.example. TypeA") || !slices.Contains(s.Asked(), "nosuch.example. TypeA") {
		t.Errorf("asked %v", s.Asked())
	}
}

// TestServePacket resolves through the server with Go's resolver over UDP.
func TestServePacket(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := ServePacket(pc, map[string]netip.Addr{"four.example.": netip.MustParseAddr("192.0.2.7")})
	defer s.Close()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "udp", s.Addr.String())
	}}
	got, err := r.LookupNetIP(t.Context(), "ip4", "four.example.")
	if err != nil || !slices.Equal(got, []netip.Addr{netip.MustParseAddr("192.0.2.7")}) {
		t.Errorf("four.example.: %v, %v", got, err)
	}
	if !slices.Contains(s.Asked(), "four.example. TypeA") {
		t.Errorf("asked %v", s.Asked())
	}
}
