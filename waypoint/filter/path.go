package filter

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// PathModifier is Gateway API's HTTPPathModifier: exactly one of the two
// kinds is set.
type PathModifier struct {
	// Full, when IsFull, replaces the whole path.
	Full   string
	IsFull bool
	// Prefix, when !IsFull, replaces the prefix the rule matched.
	Prefix string
}

func compilePath(in *configv1alpha1.PathModifier) (*PathModifier, error) {
	if in == nil || in.GetKind() == nil {
		return nil, nil
	}
	if _, ok := in.GetKind().(*configv1alpha1.PathModifier_ReplaceFullPath); ok {
		v := in.GetReplaceFullPath()
		if !strings.HasPrefix(v, "/") {
			return nil, fmt.Errorf("replaceFullPath %q does not start with /", v)
		}
		return &PathModifier{Full: v, IsFull: true}, nil
	}
	v := in.GetReplacePrefixMatch()
	if v != "" && !strings.HasPrefix(v, "/") {
		return nil, fmt.Errorf("replacePrefixMatch %q does not start with /", v)
	}
	return &PathModifier{Prefix: v}, nil
}

// Apply returns the new path for path. matchedPrefix is the rule's
// PathPrefix match value; for a prefix replacement it is replaced on path
// element boundaries, as Gateway API's table says:
//
//	/foo/bar, prefix /foo, replacement /xyz  -> /xyz/bar
//	/foo/bar, prefix /foo/, replacement /xyz/ -> /xyz/bar
//	/foo/,    prefix /foo, replacement /xyz  -> /xyz/
//	/foo,     prefix /foo, replacement ""    -> /
//
// A nil modifier returns path unchanged.
func (m *PathModifier) Apply(path, matchedPrefix string) string {
	switch {
	case m == nil:
		return path
	case m.IsFull:
		return m.Full
	}
	p := strings.TrimSuffix(matchedPrefix, "/")
	rest := path
	if strings.HasPrefix(path, p) {
		rest = path[len(p):]
	}
	out := strings.TrimSuffix(m.Prefix, "/") + rest
	if out == "" {
		return "/"
	}
	if !strings.HasPrefix(out, "/") {
		out = "/" + out
	}
	return out
}

// Rewrite is a compiled HTTPURLRewriteFilter.
type Rewrite struct {
	// Hostname replaces the Host header; empty keeps it.
	Hostname string
	// Path replaces the path; nil keeps it.
	Path *PathModifier
}

func compileRewrite(in *configv1alpha1.Rewrite) (*Rewrite, error) {
	p, err := compilePath(in.GetPath())
	if err != nil {
		return nil, err
	}
	if h := in.GetHostname(); h != "" && !validHost(h) {
		return nil, fmt.Errorf("invalid hostname %q", h)
	}
	return &Rewrite{Hostname: in.GetHostname(), Path: p}, nil
}

// Apply rewrites r in place; matchedPrefix is the rule's PathPrefix value.
func (rw *Rewrite) Apply(r *http.Request, matchedPrefix string) {
	if rw == nil {
		return
	}
	if rw.Hostname != "" {
		r.Host = rw.Hostname
	}
	if rw.Path != nil {
		r.URL.Path = rw.Path.Apply(requestPath(r), matchedPrefix)
		r.URL.RawPath = ""
	}
}

// Redirect is a compiled HTTPRequestRedirectFilter.
type Redirect struct {
	// Scheme of the Location; empty keeps the request's.
	Scheme string
	// Hostname of the Location; empty keeps the request's Host (without port).
	Hostname string
	// Port of the Location; 0 derives it (see Location).
	Port uint32
	// Path replacement; nil keeps the request's path.
	Path *PathModifier
	// StatusCode of the answer: 301, 302 (the default), 303, 307 or 308.
	StatusCode int
}

func compileRedirect(in *configv1alpha1.Redirect) (*Redirect, error) {
	r := &Redirect{Scheme: in.GetScheme(), Hostname: in.GetHostname(), Port: in.GetPort(), StatusCode: int(in.GetStatusCode())}
	switch r.Scheme {
	case "", "http", "https":
	default:
		return nil, fmt.Errorf("scheme %q is not http or https", r.Scheme)
	}
	switch r.StatusCode {
	case 0:
		r.StatusCode = http.StatusFound
	case 301, 302, 303, 307, 308:
	default:
		return nil, fmt.Errorf("status code %d is not 301, 302, 303, 307 or 308", r.StatusCode)
	}
	if r.Port > 65535 {
		return nil, fmt.Errorf("port %d is not within 1-65535", r.Port)
	}
	if r.Hostname != "" && !validHost(r.Hostname) {
		return nil, fmt.Errorf("invalid hostname %q", r.Hostname)
	}
	var err error
	if r.Path, err = compilePath(in.GetPath()); err != nil {
		return nil, err
	}
	return r, nil
}

// Location is the redirect target for r. listenerPort is the port the
// request was sent to (the service port: a waypoint's "listener"). The port
// follows Gateway API: the configured port; else, when a scheme is
// configured, that scheme's well-known port; else listenerPort. The port is
// left out for http on 80 and https on 443. The query string is kept.
func (rd *Redirect) Location(r *http.Request, matchedPrefix string, listenerPort uint32) string {
	scheme := rd.Scheme
	port := rd.Port
	if scheme == "" {
		scheme = requestScheme(r)
		if port == 0 {
			port = listenerPort
		}
	} else if port == 0 {
		port = 80
		if scheme == "https" {
			port = 443
		}
	}
	host := rd.Hostname
	if host == "" {
		host = r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	}
	if (scheme == "http" && port != 80 || scheme == "https" && port != 443) && port != 0 {
		host = net.JoinHostPort(host, strconv.Itoa(int(port)))
	} else if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	u := url.URL{Scheme: scheme, Host: host, Path: rd.Path.Apply(requestPath(r), matchedPrefix), RawQuery: r.URL.RawQuery}
	if rd.Path == nil {
		u.RawPath = r.URL.RawPath
	}
	return u.String()
}

// requestScheme is the scheme the client used: the request URL's when it
// is absolute, https over TLS, else http.
func requestScheme(r *http.Request) string {
	switch {
	case r.URL.Scheme != "":
		return r.URL.Scheme
	case r.TLS != nil:
		return "https"
	}
	return "http"
}

func requestPath(r *http.Request) string {
	if r.URL.Path == "" {
		return "/"
	}
	return r.URL.Path
}

// validHost accepts DNS names and IP literals (no port, no wildcard).
func validHost(h string) bool {
	if net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")) != nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
