package hbone

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

var discardLogger = slog.New(slog.DiscardHandler)

func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{
		"1.2.3.4:80", "[::1]:443", "[2001:db8::1]:8080", "foo", "1.2.3.4", "1.2.3.4:0",
		"[::1", "example.com:80", "[fe80::1%eth0]:80", "0.0.0.0:1", "[::]:1",
		"[::ffff:1.2.3.4]:80", "1.2.3.4:65536", "01.2.3.4:80", "1.2.3.4:080", "",
		":80", "[1.2.3.4]:80", "1.2.3.4:80 ", "[::1]:80:80",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := ParseAuthority(s)
		if err != nil {
			return
		}
		if ap.Port() == 0 || ap.Addr().Zone() != "" || ap.Addr().IsUnspecified() || ap.Addr().Is4In6() {
			t.Fatalf("ParseAuthority(%q) = %v, which breaks its rules", s, ap)
		}
		again, err := ParseAuthority(ap.String())
		if err != nil || again != ap {
			t.Fatalf("ParseAuthority(%q) = %v, but its String does not round-trip: %v, %v", s, ap, again, err)
		}
	})
}

// FuzzConnectHandler sends arbitrary request headers through the real
// server (in memory) and checks that exactly the valid HBONE requests reach
// the Handler (200) and everything else is answered 400.
func FuzzConnectHandler(f *testing.F) {
	f.Add("CONNECT", "1.2.3.4:80", "traceparent", "00-abc-01", "", "", false)
	f.Add("CONNECT", "[::1]:443", "baggage", "a=b", "", "", true)
	f.Add("GET", "1.2.3.4:80", "", "", "/", "https", false)
	f.Add("CONNECT", "foo", "", "", "", "", false)
	f.Add("CONNECT", "1.2.3.4", "", "", "", "", false)
	f.Add("CONNECT", "1.2.3.4:0", "", "", "", "", false)
	f.Add("CONNECT", "[::1", "", "", "", "", false)
	f.Add("CONNECT", "1.2.3.4:80", "", "", "/", "", false)
	f.Add("CONNECT", "1.2.3.4:80", "", "", "", "https", false)
	f.Add("CONNECT", "1.2.3.4:80", ":protocol", "websocket", "/", "https", false)
	f.Add("CONNECT", "1.2.3.4:80", "Upper", "x", "", "", false)
	f.Add("CONNECT", "1.2.3.4:80", "connection", "close", "", "", false)
	f.Add("CONNECT", "1.2.3.4:80", "te", "gzip", "", "", false)
	f.Add("CONNECT", "1.2.3.4:80", "x", "bad\x00value", "", "", false)
	f.Add("", "", "", "", "", "", true)
	f.Fuzz(func(t *testing.T, method, authority, name, value, path, scheme string, endStream bool) {
		const limit = 512
		if len(method)+len(authority)+len(name)+len(value)+len(path)+len(scheme) > 4*limit {
			return
		}
		var fields [][2]string
		if method != "" {
			fields = append(fields, [2]string{":method", method})
		}
		if authority != "" {
			fields = append(fields, [2]string{":authority", authority})
		}
		if path != "" {
			fields = append(fields, [2]string{":path", path})
		}
		if scheme != "" {
			fields = append(fields, [2]string{":scheme", scheme})
		}
		if name != "" {
			fields = append(fields, [2]string{name, value})
		}
		called := false
		srv := &Server{Handler: func(s *Stream) { called = true; s.Accept() }, Logger: discardLogger}
		res, err := rawFrameExchange(srv, fields, endStream)
		if err != nil {
			t.Fatalf("exchange: %v", err)
		}
		want := validRequest(method, authority, name, value, path, scheme)
		switch {
		case want && (res.status != http.StatusOK || !called):
			t.Fatalf("valid request %q answered %+v (handler called %v)", fields, res, called)
		case !want && called:
			t.Fatalf("invalid request %q reached the handler", fields)
		case !want && res.status != http.StatusBadRequest:
			t.Fatalf("invalid request %q answered %+v, want 400", fields, res)
		}
	})
}

// validRequest is the reference for what FuzzConnectHandler's server must
// accept.
func validRequest(method, authority, name, value, path, scheme string) bool {
	if method != "CONNECT" || path != "" || scheme != "" {
		return false
	}
	if _, err := ParseAuthority(authority); err != nil {
		return false
	}
	if name == "" {
		return true
	}
	if strings.HasPrefix(name, ":") || name != strings.ToLower(name) || !httpguts.ValidHeaderFieldName(name) ||
		!httpguts.ValidHeaderFieldValue(value) {
		return false
	}
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		return false
	case "te":
		return value == "trailers"
	}
	return true
}
