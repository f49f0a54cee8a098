// Command controller is Ambit's control plane: Kubernetes watcher,
// translator, xDS server, waypoint deployer, status writer and mesh CA. In
// local mode (--config-dir) it reads Kubernetes objects from a folder of YAML
// instead of a cluster and serves only xDS. main only parses flags and wires
// the pieces; docs/reference/controller.md describes them.
package main
