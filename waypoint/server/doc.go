// Package server makes the waypoint's L7 engine (package proxy) reachable
// over HBONE: an hbone.Server accepts CONNECT tunnels addressed to a service
// VIP:port and serves the HTTP/1.1 or h2c requests inside them with a
// proxy.Proxy, and the proxy reaches the chosen endpoints through HBONE
// tunnels of its own. The tunnel's verified peer and source address go
// with every request (proxy.Source); the Store's authorization policies are
// the proxy's Authorize hook. Service ports whose protocol is TCP are
// passed through as bytes, with L4 policy, to an endpoint. Store holds the
// configuration the waypoint receives over xDS (WaypointConfig, Service,
// Workload, Authorization).
package server
