// Package cnitest runs the ambit-cni plugin binary against a real enrolment
// server (ztunnel/enroll) with real pod network namespaces from netlab, the
// way a container runtime would: CNI_NETNS is the pod's namespace file, not
// the plugin's own. Its tests carry the build tag `netns` and need root
// (skipped without, failed under CI=true).
package cnitest
