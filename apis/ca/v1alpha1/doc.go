// Package cav1alpha1 is the gRPC contract of Ambit's mesh certificate
// authority, generated from ca.proto by `make generate` (buf with the pinned
// protoc-gen-go and protoc-gen-go-grpc). The controller serves
// CertificateService; data planes call it through pkg/caclient. See
// docs/reference/ca.md.
package cav1alpha1
