// Package meshtest runs the mesh end to end with real processes (build tag
// `netns`, root): the controller binary in local mode (a folder of Kubernetes
// YAML the test rewrites) and one ztunnel binary per lab node, all in the
// host network namespace on loopback, as a hostNetwork DaemonSet pod would
// run, each ztunnel with its own node name, ports, enrolment socket and state
// files. The binaries are built from the workspace at the start of the test
// (with -race when the test runs with -race, so a data race in either
// process fails the test).
//
// Pods are netlab namespaces of a dual-stack lab (client and other on
// node0, server on node1 in the ambient namespace; outsider on node1 in a
// namespace that is not; each with an IPv4 and an IPv6 address, as is the
// echo Service, with an EndpointSlice per family),
// reported to their node's ztunnel over the enrolment socket as the CNI
// plugin would. Certificates come from the real mesh CA (controller/ca)
// served by the test on loopback, since local mode has no CA and ztunnel's
// -local-ca-trust-domain gives each process its own root (two such ztunnels
// cannot talk to each other); the CA's Kubernetes look-ups (TokenReview,
// pods of a node) are answered from the same pods the YAML describes.
//
// Packets between the nodes are captured with an AF_PACKET socket opened in
// node0's namespace on its link to the fabric (what tcpdump does), so no
// capture tool is needed.
//
// Run:
//
//	cd integration && go test -race -count=1 -tags netns ./meshtest/
package meshtest
