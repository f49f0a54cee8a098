// Package kubetest is Ambit's envtest tier: it starts a real kube-apiserver and
// etcd (the binaries `make tools` builds), installs the Gateway API CRDs
// (experimental channel, as copied from the pinned gateway-api module by
// `make generate`) and Ambit's own CRDs from manifests/, and hands tests a
// client. Tests of this tier carry the build tag `envtest`.
package kubetest
