// Package meshtest runs the mesh end to end with real processes (build tag
// `netns`, root): the controller binary in local mode (a folder of Kubernetes
// YAML the test rewrites) and one ztunnel binary per lab node, all in the
// host network namespace on loopback, as a hostNetwork DaemonSet pod would
// run. Pods are netlab namespaces, reported to their node's ztunnel over the
// enrolment socket as the CNI plugin would. Certificates come from the real
// mesh CA (controller/ca) served by the test on loopback, since local mode
// has no CA: its Kubernetes look-ups (TokenReview, pods of a node) are
// answered from the same pod list the YAML holds.
package meshtest
