package proxy

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzSOCKSHandshake feeds arbitrary client bytes to the SOCKS5
// negotiation: it must never panic or hang.
func FuzzSOCKSHandshake(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80})
	f.Add([]byte{5, 1, 0, 5, 1, 0, 4, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 187})
	f.Add([]byte{5, 1, 0, 5, 1, 0, 3, 9, 'l', 'o', 'c', 'a', 'l', 'h', 'o', 's', 't', 0, 80})
	f.Add([]byte{5, 0})
	f.Add([]byte{4, 1, 0, 80, 10, 0, 0, 1, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		client, server := net.Pipe()
		defer client.Close()
		go func() {
			_ = client.SetDeadline(time.Now().Add(time.Second))
			_, _ = client.Write(in)
			_ = client.Close()
		}()
		go func() { // drain replies
			buf := make([]byte, 64)
			for {
				if _, err := client.Read(buf); err != nil {
					return
				}
			}
		}()
		_ = server.SetDeadline(time.Now().Add(time.Second))
		_, _ = socksHandshake(server)
		server.Close()
	})
}

// FuzzHeaders parses arbitrary Forwarded and baggage values.
func FuzzHeaders(f *testing.F) {
	f.Add(`for=10.0.0.1`, `k8s.namespace.name=shop,k8s.pod.name=a;prop=1`)
	f.Add(`for="[fd00::1]";proto=https, for=x`, `=,,a=`)
	f.Fuzz(func(t *testing.T, fwd, bag string) {
		h := http.Header{"Forwarded": {fwd}, "Baggage": {bag}}
		if a, ok := ForwardedFor(h); ok && !a.IsValid() {
			t.Errorf("ForwardedFor(%q) reported an invalid address", fwd)
		}
		_ = BaggageValues(h)
	})
}

// FuzzResolverNames expands arbitrary names with a search list: every
// candidate is absolute, a name with a final dot is only itself, and the
// name as given is always among the candidates, once.
func FuzzResolverNames(f *testing.F) {
	f.Add("db", "shop.svc.cluster.local", uint8(5))
	f.Add("db.example.", "corp.example.", uint8(1))
	f.Add("a.b.c", "", uint8(0))
	f.Add(".", "..", uint8(15))
	f.Fuzz(func(t *testing.T, name, search string, ndots uint8) {
		if strings.Trim(name, ".") == "" {
			return // lookup refuses an empty name before expanding it
		}
		r := resolver{searches: []string{search, "svc.cluster.local"}, ndots: int(ndots)}
		got := r.names(name)
		asIs := name
		if !strings.HasSuffix(asIs, ".") {
			asIs += "."
		}
		n := 0
		for _, c := range got {
			if !strings.HasSuffix(c, ".") {
				t.Fatalf("names(%q) gave %q, not absolute", name, c)
			}
			if c == asIs {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("names(%q) = %q: the name as given %d times", name, got, n)
		}
		if strings.HasSuffix(name, ".") && len(got) != 1 {
			t.Fatalf("names(%q) = %q: an absolute name is only itself", name, got)
		}
	})
}
