// Package server makes the waypoint's L7 engine (package proxy) reachable
// over HBONE: an hbone.Server accepts CONNECT tunnels addressed to a service
// VIP:port and serves the HTTP/1.1 or h2c requests inside them with a
// proxy.Proxy, and the proxy reaches the chosen endpoints through HBONE
// tunnels of its own. Store holds the configuration the waypoint receives
// over xDS (WaypointConfig, Service, Workload).
package server
