// Package redirecttest tests ztunnel's in-pod redirection (ztunnel/redirect)
// in real network namespaces built by netlab: nftables capture rules inside a
// pod, the capture listeners, the marked dialer, original destinations,
// kubelet-probe and loopback exemptions, removal and re-installation.
// The tests carry the build tag `netns` and need root.
package redirecttest
