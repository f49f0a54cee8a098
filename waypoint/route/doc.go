// Package route compiles a waypoint's configuration (WaypointConfig) into
// an immutable routing table and matches requests against it.
//
// Compile validates everything once (regular expressions, filters, retry
// and backend policies) and returns an error that names the bad rule, so
// that the xDS handler can reject (NACK) the update and keep the last good
// table. A Table is never modified after Compile and is safe for concurrent
// use; a new configuration gives a new Table.
//
// Rules arrive sorted by Gateway API precedence (the controller sorts
// them); Match takes the first rule whose match fits the request.
package route
