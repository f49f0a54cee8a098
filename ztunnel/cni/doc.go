// Package cni is the logic of ambit-cni, the chained CNI plugin that reports
// every pod of the node to the local ztunnel over the enrolment API
// (package enroll). The binary (ztunnel/cmd/ambit-cni) only calls
// skel.PluginMainFuncs with Funcs.
//
// ztunnel, not the plugin, decides whether a pod is in the mesh: it knows the
// namespaces' dataplane mode from the controller's config, and it needs the
// netns of every pod so that labelling a namespace later enrols running pods
// without a restart. See docs/reference/cni.md for the configuration, the
// fail-open/fail-closed rule and the error codes.
package cni
