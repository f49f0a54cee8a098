// Package waypoint is the root of the waypoint module; its binaries live under cmd/.
package waypoint
