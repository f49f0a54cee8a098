// Package meshbench is Ambit's data-plane benchmark (`make bench`; build tag
// `netns`, root). In one two-node netlab topology and one run it measures
// three paths between the same client pod (node0) and server pod (node1):
//
//   - direct: plain TCP between the pods, no proxy;
//   - haproxy: a pair of Debian HAProxy 2.6 TCP proxies, one in each pod,
//     with mutual TLS 1.3 between them (the outside baseline);
//   - mesh: the real controller (local mode) and two real ztunnel processes,
//     the pods enrolled through the enrolment socket, so the client's
//     connections are captured and carried in HBONE to the server's ztunnel.
//
// Load is fortio v1.68.2 (built by `make tools` into bin/tools/bench-*):
// `fortio load` in TCP mode, 1 KiB echoed requests at a constant 1000 qps,
// against `fortio tcp-echo` in the server pod; and one single-stream bulk
// transfer per path. Every figure is reported next to, and as a ratio
// against, the direct path of the same run. See docs/reference/benchmarks.md.
package meshbench
