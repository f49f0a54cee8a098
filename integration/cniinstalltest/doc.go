// Package cniinstalltest tests how ztunnel installs into and leaves a node.
//
// With build tag envtest, the uninstall-or-restart decision
// (daemon.DaemonSetCheck) runs against a real kube-apiserver: a DaemonSet
// that exists means a restart; one being deleted, a deleted one, a
// terminating namespace or a service account whose RBAC is gone mean an
// uninstall. With build tag netns (root), an in-process ztunnel that
// captured pods of a network-namespace lab is stopped both ways: a restart
// leaves the capture rules, the state files and the CNI chain; an uninstall
// removes the rules from every pod (which then talk directly again), the
// CNI chain, the plugin binary and the state files.
package cniinstalltest
