// Package daemon wires ztunnel together: the xDS client feeding the
// configuration store, the certificate manager, the enrolment server and
// its hooks, one proxy.Pod per captured pod, and the metrics, readiness and
// admin HTTP endpoints.
//
// # Enrolment
//
// ztunnel keeps every pod reported over the enrolment API (by the CNI plugin,
// or a test harness) and captures exactly those whose Workload in the
// configuration is enrolled (its namespace is ambient and the pod did not opt
// out) and has an identity. It re-evaluates every reported pod whenever the
// configuration changes, so labelling a namespace, or opting a pod out, takes
// effect on running pods without a restart. Capturing a pod means: obtain a
// certificate for its identity, open the three listeners inside its network
// namespace, install the capture rules, and serve. Releasing it (config says
// not enrolled, or the pod is removed) removes the rules first, then closes
// the listeners; the identity's certificate is dropped when no captured pod
// uses it any more. A reported pod the configuration does not know yet is
// left as it is until it appears.
//
// # Restart
//
// On shutdown ztunnel stops serving but leaves the rules in place, so a
// restarting ztunnel never lets traffic bypass the mesh (connections fail
// until it is back). At start it loads the persisted xDS state, waits for the
// configuration (from disk or the controller, at most Config.ResyncWait), and
// calls enroll.Server.Resync, which replays every persisted pod.
//
// # Uninstall
//
// With Config.Shutdown (in Kubernetes a DaemonSetCheck on ztunnel's own
// DaemonSet) a stop is first classified: a restart keeps everything as
// above; an uninstall unchains the CNI plugin (Config.CNI), releases every
// pod it knows (removing the rules, so applications talk directly again) and
// removes the state files. Config.CNI, when set, also keeps the plugin
// chained while ztunnel runs, and readiness waits for it.
package daemon
