// Package netlab is Ambit's network-namespace tier: it builds "nodes" and
// "pods" as Linux network namespaces on one machine and runs functions or
// processes inside them. Tests of this tier carry the build tag `netns` and
// need root.
//
// # Topology and addresses
//
// Everything lives in 10.250.0.0/16, a range that exists only inside the
// namespaces a lab creates; the host's own network namespace is never touched.
//
//   - a "fabric" namespace holds a bridge that stands for the network between
//     nodes;
//   - node i is a namespace with eth0 = 10.250.0.(10+i)/24 on the fabric, a
//     bridge cbr0 = 10.250.(i+1).1/24 for its pods, IP forwarding on, and a
//     route to every other node's pod range through that node;
//   - pod j on node i is a namespace with eth0 = 10.250.(i+1).(j+2)/24 on the
//     node's cbr0 and a default route through 10.250.(i+1).1.
//
// A dual-stack lab (New(t, DualStack())) adds IPv6 from fdab:250:ff00::/48
// (unique-local, Range6) on the same plan: node i fdab:250:ff00::(10+i)/64
// on the fabric and fdab:250:ff00:(i+1)::1/64 on cbr0, pod j
// fdab:250:ff00:(i+1)::(j+2)/64 with a default route through its node,
// IPv6 forwarding on in the nodes. Its addresses skip duplicate address
// detection, so they are usable at once.
//
// No namespace has a route or an interface that leads off the machine: a
// packet for any address outside 10.250.0.0/16 (or fdab:250:ff00::/48) is
// dropped by the node as unroutable.
//
// # Names and clean-up
//
// Namespaces are named "ambitlab-<pid>-<name>" (visible in `ip netns list`).
// A lab deletes its namespaces when the test ends; New first sweeps namespaces
// left by processes that no longer run, so a crashed run leaves nothing for
// long.
package netlab
