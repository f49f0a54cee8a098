// Package metrics holds the controller's own Prometheus collectors. They are
// registered in controller-runtime's registry (Registry), the one the
// manager serves on the metrics port (--metrics-listen, :15020) next to
// controller-runtime's own metrics, so the controller has one registry.
// docs/reference/controller.md lists every metric.
package metrics
