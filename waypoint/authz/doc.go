// Package authz evaluates Ambit AuthorizationPolicies at the waypoint: the
// Authorization resources the controller sends a waypoint (those that
// target its Gateway, and those that target a Service it serves), matched
// against the client's verified identity and the HTTP request.
package authz
