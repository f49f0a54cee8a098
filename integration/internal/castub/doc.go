// Package castub stands in for the Kubernetes API behind the mesh CA
// (controller/ca) in tests that run the real CA without a cluster: TokenAuth
// replaces TokenReview, Pods replaces the pod look-ups.
package castub
