// Package xdsserver serves the controller's translated configuration to the
// data planes over xDS delta ADS (go-control-plane's server), with Ambit's own
// resource types (apis/config/v1alpha1). Every replica of the controller runs
// one. Each client gets the subset its node ID asks for (see
// configv1alpha1.ParseNodeID):
//
//   - Workloads and Services: every client;
//   - Authorizations: ztunnels get the L4 ones (workload-selector, namespace
//     and mesh-wide scopes); a waypoint gets those that target it or a
//     Service it serves;
//   - WaypointConfig: a waypoint gets its own; ztunnels none.
//
// Publish diffs each subset against what was published before, so an
// unchanged resource is never re-sent, and a client that reconnects with the
// versions it holds receives only what changed.
package xdsserver
