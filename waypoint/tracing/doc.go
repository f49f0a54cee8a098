// Package tracing gives the waypoint's requests OpenTelemetry spans: a
// server span per request and a client span per try, W3C trace context
// and B3 (single and multi header) propagated from the client to the
// endpoint, and OTLP/gRPC export when an endpoint is configured.
package tracing
