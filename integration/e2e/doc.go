// Package e2e holds Ambit's end-to-end tests: the one-machine Kubernetes of
// integration/cluster, Ambit installed only from manifests/ (through an
// overlay that sets the image tag), and the demo application of
// integration/cmd/ambit-demo. The tests carry the build tag e2e and are run by
// hack/e2e.sh (`make e2e`, part of `make test` as root), which brings the
// cluster up, imports the images and passes:
//
//	AMBIT_E2E_KUBECONFIG  the cluster's kubeconfig
//	AMBIT_E2E_KUBECTL     the kubectl binary of the same version
//	AMBIT_E2E_VERSION     the tag of the images built by `make images`
//
// The test runs its steps in order on one cluster: install, plaintext
// baseline, enrolment of running pods, waypoint, controller loss, uninstall.
package e2e
