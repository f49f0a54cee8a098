// Package redirect captures an enrolled pod's TCP traffic inside the pod's own
// network namespace, the way ambient meshes do it ("in-pod redirection").
//
// It provides three building blocks that ztunnel (or a test) puts together
// for each pod:
//
//   - Netns: an open handle on the pod's network namespace (a path as a CNI
//     runtime hands it over: /var/run/netns/NAME or /proc/PID/ns/net) that runs
//     functions on a locked OS thread inside it and restores the thread after;
//   - listeners opened inside the pod namespace on the capture ports
//     (OutboundPort 15001, InboundPort 15006, HBONEPort 15008), usable from any
//     goroutine afterwards, and a Dialer whose sockets live in the pod
//     namespace and carry ztunnel's socket mark (Mark) so that the capture
//     rules let them through;
//   - nftables rules, installed over netlink in a table of their own
//     ("inet ambit") inside the pod namespace: outbound TCP is redirected to
//     15001, inbound TCP except HBONE (15008) and except kubelet probes to
//     15006. Install replaces the table atomically, Remove deletes it, Rules
//     lists what is installed.
//
// OriginalDst recovers the destination a redirected connection was addressed
// to (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST).
//
// The exact rules, the mark and the probe exemption are documented in
// docs/reference/redirection.md.
package redirect
