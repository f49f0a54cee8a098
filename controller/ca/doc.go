// Package ca is Ambit's mesh certificate authority: the gRPC
// CertificateService (apis/ca/v1alpha1) that signs workload certificates.
//
// The pieces, each in its own file:
//   - root.go: the root key and certificate, kept in Secret
//     ambit-system/ambit-ca (generated when absent, or supplied by the
//     operator and then never modified), and published to ConfigMap
//     ambit-system/ambit-ca-root for data planes to bootstrap trust;
//   - authn.go: callers authenticate with a Kubernetes service-account token
//     (gRPC metadata "authorization: Bearer <jwt>", audience "ambit-ca"),
//     checked with a TokenReview against the apiserver;
//   - authz.go: a workload may obtain only its own identity; the ztunnel
//     service account may obtain the identities of pods on its own node;
//   - request.go: CSR and validity checks, pure functions;
//   - serving.go: the CA's own TLS serving certificate, signed by the root
//     and re-issued at half life;
//   - server.go: the gRPC service that ties them together, with one gRPC
//     status code per kind of failure.
//
// docs/reference/ca.md is the user-facing description.
package ca
