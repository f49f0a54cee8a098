// Package meshbench is Ambit's data-plane benchmark (`make bench`; build tag
// `netns`, root). In one three-node netlab topology and one run it measures
// paths between the same client pod (node0) and server pod (node1).
//
// TCP paths (fortio's TCP echo and a single-stream bulk transfer):
//
//   - direct: plain TCP between the pods, no proxy;
//   - haproxy: a pair of Debian HAProxy 2.6 TCP proxies, one in each pod,
//     with mutual TLS 1.3 between them (the outside baseline);
//   - mesh: the real controller (local mode) and two real ztunnel processes,
//     the pods enrolled through the enrolment socket, so the client's
//     connections are captured and carried in HBONE to the server's ztunnel.
//
// HTTP paths (fortio's HTTP echo server, 1 KiB POSTs echoed back):
//
//   - http-direct: plain HTTP between the pods;
//   - http-haproxy-l7: one Debian HAProxy 2.6 in `mode http`, in a pod of
//     node2 (the outside L7 baseline);
//   - http-l4: the mesh path above, for HTTP;
//   - http-waypoint: the client addresses a Service that uses a waypoint
//     (a Gateway of class ambit-waypoint and an HTTPRoute on the Service),
//     so its ztunnel tunnels to the real waypoint binary in that node2 pod,
//     which routes the request and forwards it in HBONE, as its own
//     identity, to the server's ztunnel.
//
// gRPC paths (fortio's gRPC ping, a unary call with a 1 KiB payload over
// h2c): grpc-direct, grpc-l4 (through both ztunnels) and grpc-waypoint
// (the Service "grpc", appProtocol grpc, through the waypoint).
//
// HTTP with a new connection per request: conn-direct, conn-haproxy (the
// HAProxy pair) and conn-mesh.
//
// Load is fortio v1.68.2 (built by `make tools` into bin/tools/bench-*) at a
// constant 1000 requests/s, plus a max-requests/s run of the direct, l4 and
// waypoint HTTP paths. Every figure is reported next to the direct path of
// the same run. See docs/reference/benchmarks.md.
package meshbench
