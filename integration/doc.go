// Package integration is the root of Ambit's end-to-end test module: the
// envtest tier (kubetest), the network-namespace tier (netlab) and, later, the
// local-cluster harness and benchmarks. It is the only module allowed heavy
// test-only dependencies.
package integration
