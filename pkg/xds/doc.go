// Package xds is the configuration client of Ambit's data planes (ztunnel and
// waypoint): it subscribes to the controller over xDS delta ADS (the Envoy
// discovery protocol, one gRPC stream for every resource type), hands each
// resource type's full current set to a typed handler, ACKs what the handler
// accepts and NACKs what it rejects, reconnects with exponential backoff and
// full jitter, and keeps the last good state in memory and on disk so that a
// data plane can start, and keep running, while the controller is away.
package xds
