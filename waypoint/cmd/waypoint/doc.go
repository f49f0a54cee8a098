// Command waypoint is the per-namespace L7 proxy that applies HTTPRoute and GRPCRoute rules.
package main
