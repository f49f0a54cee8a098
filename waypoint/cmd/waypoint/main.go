package main

import "github.com/ambit-mesh/ambit/pkg/version"

func main() {
	version.Placeholder("waypoint", "is the per-namespace L7 proxy that applies HTTPRoute and GRPCRoute rules")
}
