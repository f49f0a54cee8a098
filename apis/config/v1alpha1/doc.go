// Package configv1alpha1 holds the generated Go code of Ambit's data-plane
// configuration resources (config.proto): Workload, Service, Authorization and
// WaypointConfig, which the controller serves over xDS and the ztunnel and
// waypoint consume through pkg/xds.
package configv1alpha1
