package proxy

import (
	"net/http"
	"net/netip"
	"strings"

	"github.com/ambit-mesh/ambit/ztunnel/config"
)

// Baggage keys carried in the tunnel's `baggage` header (W3C baggage), the
// way Istio's ztunnel describes the source workload.
const (
	BaggageNamespace       = "k8s.namespace.name"
	BaggagePod             = "k8s.pod.name"
	BaggageWorkload        = "k8s.workload.name"
	BaggageService         = "service.name"
	BaggageServiceRevision = "service.version"
)

// tunnelHeader returns the headers of an outbound tunnel from src (nil when
// unknown) whose application connected from srcIP.
func tunnelHeader(src *config.Workload, srcIP netip.Addr) http.Header {
	h := http.Header{}
	if src != nil {
		var parts []string
		add := func(k, v string) {
			if v != "" {
				parts = append(parts, k+"="+v)
			}
		}
		add(BaggageNamespace, src.Namespace)
		add(BaggagePod, src.PodName)
		add(BaggageWorkload, src.Proto.GetWorkloadName())
		add(BaggageService, src.Proto.GetCanonicalName())
		add(BaggageServiceRevision, src.Proto.GetCanonicalRevision())
		if len(parts) > 0 {
			h.Set("Baggage", strings.Join(parts, ","))
		}
	}
	if srcIP.IsValid() {
		h.Set("Forwarded", forwardedFor(srcIP))
	}
	return h
}

// forwardedFor formats an RFC 7239 `for=` element.
func forwardedFor(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is6() {
		return `for="[` + ip.String() + `]"`
	}
	return "for=" + ip.String()
}

// ForwardedFor returns the address of the first `for=` element of a
// Forwarded header, if it holds an IP.
func ForwardedFor(h http.Header) (netip.Addr, bool) {
	v := h.Get("Forwarded")
	if v == "" {
		return netip.Addr{}, false
	}
	first, _, _ := strings.Cut(v, ",")
	for _, pair := range strings.Split(first, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || !strings.EqualFold(k, "for") {
			continue
		}
		val = strings.Trim(val, `"`)
		val = strings.TrimSuffix(strings.TrimPrefix(val, "["), "]")
		if a, err := netip.ParseAddr(val); err == nil {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// BaggageValues parses a W3C baggage header into key/value pairs (members'
// properties are dropped).
func BaggageValues(h http.Header) map[string]string {
	out := map[string]string{}
	for _, v := range h.Values("Baggage") {
		for _, m := range strings.Split(v, ",") {
			m, _, _ = strings.Cut(m, ";")
			k, val, ok := strings.Cut(strings.TrimSpace(m), "=")
			if ok && k != "" {
				out[strings.TrimSpace(k)] = strings.TrimSpace(val)
			}
		}
	}
	return out
}
