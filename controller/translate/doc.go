// Package translate is the controller's pure translation stage: it turns the
// Kubernetes objects Ambit watches (Namespaces, Pods, Services,
// EndpointSlices, Gateway API objects and Ambit's CRDs) into the data-plane
// configuration resources of apis/config/v1alpha1 and into the status every
// object should carry. It makes no client calls and keeps no state: Translate
// is a function of its inputs, tested with golden files (testdata/*.in.yaml ->
// *.out.yaml; `go test ./translate -update` rewrites the outputs).
package translate
