// Package ambitctl is the ambitctl command line: `check` (is Ambit
// installed and healthy), `waypoint apply|delete|list` and
// `ztunnel-config` (a node's ztunnel state through a port-forward to its
// admin port). Run is the whole command; cmd/ambitctl wires it to the
// process. See docs/reference/ambitctl.md.
package ambitctl
