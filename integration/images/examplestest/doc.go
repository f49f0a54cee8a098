// Package examplestest checks the manifests under examples/ (the sample
// application and the routes, waypoint and policy the README walks through):
// in the envtest tier every one of them must decode and be accepted, with
// strict field validation, by a real kube-apiserver that has the Gateway API
// and Ambit CRDs, and `kubectl kustomize examples/sample-app` must render,
// with the demo image's tag settable the way installers set it.
package examplestest
