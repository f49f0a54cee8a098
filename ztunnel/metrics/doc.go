// Package metrics holds ztunnel's Prometheus metrics, in a registry of its own
// (never the global one): Istio's standard TCP metrics (istio_tcp_*, with
// Istio's label names so that existing dashboards, Kiali and Flagger work
// unchanged) and ztunnel's own health metrics (ztunnel_*).
//
// Byte counts follow Istio: "received" are bytes from the connection's client
// to its server (the request direction), "sent" the other way, whichever side
// reports. Both are counted as they flow, so long-lived connections show up
// before they close.
package metrics
