// Package admin serves the waypoint's operational endpoints: Prometheus
// metrics on :15020 (/metrics), readiness and liveness on :15021
// (/healthz/ready, /healthz/live), and the readiness state they report,
// including the drain that starts on SIGTERM.
package admin
