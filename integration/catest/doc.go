// Package catest tests the mesh CA end to end (build tag envtest): the real
// CA server of controller/ca on 127.0.0.1, a real kube-apiserver and etcd
// (kubetest), real service-account tokens from TokenRequest checked by
// TokenReview, and the real client of pkg/caclient.
package catest
