package filter

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// HeaderModifier is a compiled Gateway API HTTPHeaderFilter. Names are in
// canonical form, so that matching is case-insensitive.
type HeaderModifier struct {
	// Set replaces the header's values (or adds it).
	Set []Header
	// Add appends a value to the header (or adds it).
	Add []Header
	// Remove deletes the headers.
	Remove []string
}

// Header is one name and value.
type Header struct{ Name, Value string }

func compileHeaders(in *configv1alpha1.HeaderModifier) (*HeaderModifier, error) {
	m := &HeaderModifier{}
	conv := func(kv map[string]string) ([]Header, error) {
		var out []Header
		for k, v := range kv {
			if !validName(k) {
				return nil, fmt.Errorf("invalid header name %q", k)
			}
			if strings.ContainsAny(v, "\r\n\x00") {
				return nil, fmt.Errorf("invalid value for header %q", k)
			}
			out = append(out, Header{Name: http.CanonicalHeaderKey(k), Value: v})
		}
		// Map order is random; a stable order keeps results reproducible.
		slices.SortFunc(out, func(a, b Header) int { return strings.Compare(a.Name, b.Name) })
		return out, nil
	}
	var err error
	if m.Set, err = conv(in.GetSet()); err != nil {
		return nil, err
	}
	if m.Add, err = conv(in.GetAdd()); err != nil {
		return nil, err
	}
	for _, k := range in.GetRemove() {
		if !validName(k) {
			return nil, fmt.Errorf("invalid header name %q", k)
		}
		m.Remove = append(m.Remove, http.CanonicalHeaderKey(k))
	}
	return m, nil
}

// validName reports whether s is an HTTP token (RFC 9110 field-name).
func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
		if !ok {
			return false
		}
	}
	return true
}

// Apply modifies h: first Remove, then Set, then Add, so that a header both
// set and added ends with both values. A nil modifier does nothing.
func (m *HeaderModifier) Apply(h http.Header) {
	if m == nil {
		return
	}
	for _, k := range m.Remove {
		h.Del(k)
	}
	for _, kv := range m.Set {
		h.Set(kv.Name, kv.Value)
	}
	for _, kv := range m.Add {
		h.Add(kv.Name, kv.Value)
	}
}

// ApplyRequest modifies a request's headers. Go keeps the Host header in
// r.Host, not r.Header, so setting, adding or removing "Host" changes
// r.Host instead (remove leaves it unchanged: a request needs a host).
func (m *HeaderModifier) ApplyRequest(r *http.Request) {
	if m == nil {
		return
	}
	m.Apply(r.Header)
	if v := r.Header.Get("Host"); v != "" {
		r.Host = v
	}
	r.Header.Del("Host")
}
