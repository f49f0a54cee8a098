// Package pipeline runs the controller's translation step and publishes its
// result: it calls the pure translate function on a snapshot of the world,
// recovers from a panic in it (logged, counted, and the last good
// configuration kept), and hands every successful Output to the xDS server.
// Cluster mode (package k8s) and local mode (package localmode) share it, so
// both run exactly the same translation and publication.
package pipeline
