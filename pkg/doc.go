// Package pkg is the root of Ambit's runtime libraries shared by the ztunnel,
// waypoint and controller binaries. Each subpackage owns one concept.
package pkg
