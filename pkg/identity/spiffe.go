package identity

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// DefaultTrustDomain is the trust domain used when none is configured.
const DefaultTrustDomain = "cluster.local"

// ErrInvalidSPIFFEID is wrapped by every error ParseSPIFFEID returns.
var ErrInvalidSPIFFEID = errors.New("invalid SPIFFE ID")

// SPIFFEID is a Kubernetes workload identity:
// spiffe://<TrustDomain>/ns/<Namespace>/sa/<ServiceAccount>.
type SPIFFEID struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// String formats the ID as a URI.
func (id SPIFFEID) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URL returns the ID as a URL, as placed in a certificate's URI SAN.
func (id SPIFFEID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// Validate checks each part against the SPIFFE and Kubernetes naming rules.
func (id SPIFFEID) Validate() error {
	if err := validTrustDomain(id.TrustDomain); err != nil {
		return err
	}
	if !validDNSLabel(id.Namespace) {
		return fmt.Errorf("%w: namespace %q is not a DNS label", ErrInvalidSPIFFEID, id.Namespace)
	}
	if !validSubdomain(id.ServiceAccount) {
		return fmt.Errorf("%w: service account %q is not a DNS subdomain", ErrInvalidSPIFFEID, id.ServiceAccount)
	}
	return nil
}

// ParseSPIFFEID parses "spiffe://td/ns/N/sa/S". It rejects anything else:
// other paths, query, fragment, user info, ports, percent-encoding and
// upper-case trust domains.
func ParseSPIFFEID(s string) (SPIFFEID, error) {
	const scheme = "spiffe://"
	if !strings.HasPrefix(s, scheme) {
		return SPIFFEID{}, fmt.Errorf("%w: %q does not start with %q", ErrInvalidSPIFFEID, s, scheme)
	}
	rest := s[len(scheme):]
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return SPIFFEID{}, fmt.Errorf("%w: %q has no path", ErrInvalidSPIFFEID, s)
	}
	if err := validTrustDomain(td); err != nil {
		return SPIFFEID{}, err
	}
	parts := strings.Split(path, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return SPIFFEID{}, fmt.Errorf("%w: %q: path must be /ns/<namespace>/sa/<service-account>", ErrInvalidSPIFFEID, s)
	}
	id := SPIFFEID{TrustDomain: td, Namespace: parts[1], ServiceAccount: parts[3]}
	if err := id.Validate(); err != nil {
		return SPIFFEID{}, err
	}
	return id, nil
}

// validTrustDomain accepts lower-case letters, digits, '.', '-' and '_', as
// the SPIFFE specification allows.
func validTrustDomain(td string) error {
	if td == "" || len(td) > 255 {
		return fmt.Errorf("%w: trust domain %q must be 1-255 characters", ErrInvalidSPIFFEID, td)
	}
	for _, c := range []byte(td) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%w: trust domain %q has character %q", ErrInvalidSPIFFEID, td, c)
		}
	}
	return nil
}

// validDNSLabel reports whether s is an RFC 1123 label (Kubernetes namespace names).
func validDNSLabel(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, c := range []byte(s) {
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// validSubdomain reports whether s is an RFC 1123 subdomain (service account names).
func validSubdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !validDNSLabel(label) {
			return false
		}
	}
	return true
}
