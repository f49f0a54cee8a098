// Package config holds ztunnel's view of the mesh, built from the resources the
// controller pushes over xDS (apis/config/v1alpha1): Workloads, Services and
// L4 Authorizations.
//
// Store implements one pkg/xds Handler per resource type. Each handler
// validates the complete set it receives and rejects it (so the client NACKs
// it and keeps the last good set) when any resource is malformed: an address
// that is not an IP, a SPIFFE ID that does not parse, a waypoint without an
// address, an authorization without scope or action, and so on. An accepted
// set is compiled with the other two types' current sets into an immutable
// Snapshot, indexed by workload name and IP and by service VIP:port, and
// swapped in atomically: readers (every proxied connection) never take a
// lock, and a writer never waits for a reader.
//
// References between resources (an endpoint naming a workload, a workload
// listing a policy) are resolved at lookup time, not validated, because the
// types arrive independently and in any order.
package config
