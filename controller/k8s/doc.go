// Package k8s is the controller's Kubernetes side: a controller-runtime
// manager whose caches watch everything translation reads, one level-based
// reconciler, and the leader-only writers.
//
// Every watched event enqueues the same key. Reconcile lists the whole world
// from the caches into a translate.Input, runs the pipeline (translate, then
// publish to the xDS server) and, on the elected leader only, applies the
// waypoint children (package deploy) and writes status (status.go). Every
// replica reconciles and serves xDS; only the leader writes. A Lease in the
// system namespace elects the leader; when a replica becomes leader it
// enqueues the key so its first writes do not wait for an event.
//
// Errors reach users as conditions (computed by translate) and Events on the
// Gateway; a failed write (a conflict, a stale cache) is retried by
// re-queueing the key with backoff.
package k8s
