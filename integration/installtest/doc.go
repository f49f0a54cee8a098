// Package installtest checks Ambit's kustomize install (manifests/) the way a
// user runs it: the real kubectl renders it, applies it with server-side apply
// to a real kube-apiserver (the envtest tier, started without CRDs so that the
// install brings them), and deletes it again. The tests assert the installed
// objects against the pod contracts of the controller and ztunnel, the RBAC
// as the apiserver evaluates it, and that uninstalling leaves no object of
// Ambit behind. Tests carry the build tag `envtest`.
package installtest
