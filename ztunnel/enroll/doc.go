// Package enroll is the enrolment API between the CNI plugin (or a test
// harness) and ztunnel: a small HTTP/1.1 JSON API served by ztunnel on a local
// unix socket, and a client for it.
//
// # Wire format
//
// The socket (default [DefaultSocketPath], mode 0600, owned by ztunnel's user)
// speaks plain HTTP/1.1 with JSON bodies, so it can be debugged with curl:
//
//	curl --unix-socket /var/run/ambit/ztunnel.sock http://ztunnel/v1/pods
//
// Endpoints:
//
//	POST   /v1/pods                         AddPod: body AddPodRequest -> 200 AddPodResponse
//	DELETE /v1/pods/{uid}[?containerID=ID]  RemovePod -> 200 RemovePodResponse (unknown uid: removed=false)
//	GET    /v1/pods                         List -> 200 ListResponse (sorted by namespace, name)
//	GET    /v1/pods/{uid}                   Get -> 200 GetResponse, 404 when unknown
//	GET    /healthz                         200 "ok"
//
// Every error is a JSON [ErrorResponse] with an HTTP status: 400
// invalid_argument (validation), 404 not_found, 405 method not allowed, 413
// too_large (body over [Options.MaxRequestBytes]), 500 add_failed (the OnAdd
// hook failed; its message is passed on), 500 internal.
//
// # Semantics
//
// The server keeps the set of pods reported to it, keyed by pod UID, and calls
// the [Hooks] that ztunnel implements: OnAdd when a pod joins the set,
// OnRemove when it leaves. AddPod is idempotent: repeating it with the same
// data is a no-op (no hook call); an AddPod for a known UID with a different
// netns path, container ID or addresses replaces the entry (OnRemove of the
// old, then OnAdd of the new). An OnAdd error fails the request and the pod is
// not kept, so the CNI plugin can fail the pod's sandbox and the runtime
// retries. RemovePod of an unknown UID, or with a container ID that is not the
// current sandbox's (a late DEL of an old sandbox), is a successful no-op.
//
// The set is persisted to a state file (default [DefaultStateFile]) by
// writing a temporary file and renaming it over the old one, before the hooks
// run, so a crash never loses a pod that a hook may have acted on. After a
// restart ztunnel calls [Server.Resync], which replays OnAdd for every
// persisted pod whose network namespace still exists and drops the others.
//
// Requests for one UID are serialised; requests for different UIDs run
// concurrently.
package enroll
