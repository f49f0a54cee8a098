package proxy

import (
	"net/http"
	"net/netip"
	"strings"

	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/metrics"
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
// unknown) whose application connected from srcIP, to svc (nil when the
// application connected to a workload, not a service).
func tunnelHeader(src *config.Workload, srcIP netip.Addr, svc *config.Service) http.Header {
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
		fwd := hbone.ForwardedFor(srcIP)
		if svc != nil {
			// The service the application asked for, which the
			// destination's ztunnel reports (inboundService).
			fwd += ";host=" + serviceHost(svc)
		}
		h.Set("Forwarded", fwd)
	}
	return h
}

// serviceHost is the name metrics give a service: its hostname, else
// "<namespace>/<name>".
func serviceHost(svc *config.Service) string {
	if h := svc.Proto.GetHostname(); h != "" {
		return h
	}
	return svc.Name
}

// inboundService is the destination_service the destination's ztunnel
// reports for a connection to dst, an address and port of one of its pods:
// among the services that send to dst (config.Snapshot.ServicesAt), the one
// the client named (claimed, the tunnel's Forwarded host=), else the first
// by name; Unknown when none does. Several services selecting the same pod
// port make it a guess, as in Istio's ztunnel; a claim is believed only for
// a service that does send there.
func inboundService(snap *config.Snapshot, dst netip.AddrPort, claimed string) string {
	svcs := snap.ServicesAt(dst)
	if len(svcs) == 0 {
		return metrics.Unknown
	}
	if claimed != "" {
		for _, s := range svcs {
			if h := serviceHost(s); strings.EqualFold(h, claimed) {
				return h
			}
		}
	}
	return serviceHost(svcs[0])
}

// ForwardedFor returns the address of the first `for=` element of a
// Forwarded header, if it holds an IP.
func ForwardedFor(h http.Header) (netip.Addr, bool) {
	val := forwardedParam(h, "for")
	val = strings.TrimSuffix(strings.TrimPrefix(val, "["), "]")
	if a, err := netip.ParseAddr(val); err == nil {
		return a.Unmap(), true
	}
	return netip.Addr{}, false
}

// ForwardedHost returns the `host=` parameter of a Forwarded header's
// first element, or "".
func ForwardedHost(h http.Header) string { return forwardedParam(h, "host") }

// forwardedParam returns parameter key of the first element of a Forwarded
// header (RFC 7239), unquoted, or "".
func forwardedParam(h http.Header, key string) string {
	first, _, _ := strings.Cut(h.Get("Forwarded"), ",")
	for _, pair := range strings.Split(first, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if ok && strings.EqualFold(k, key) {
			return strings.Trim(val, `"`)
		}
	}
	return ""
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
