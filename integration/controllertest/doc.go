// Package controllertest holds envtest tests of the controller (build tag
// envtest): the real controller-runtime manager of controller/k8s, the real
// translation and xDS server, in-process against a real kube-apiserver and
// etcd (kubetest). envtest runs no kubelet, scheduler or garbage collector:
// tests set Pod status themselves, Deployments never become ready, and the
// controller's own cleanup (not the GC) removes a deleted Gateway's children.
package controllertest
