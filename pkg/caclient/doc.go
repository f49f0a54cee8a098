// Package caclient is the client of Ambit's mesh CA (the controller's gRPC
// CertificateService, apis/ca/v1alpha1). Client implements identity.Fetcher:
// it dials the CA over TLS, trusting a root bundle (PEM bytes or a file, such
// as ConfigMap ambit-system/ambit-ca-root mounted in the pod) for the CA's
// server name, authenticates each call with a Kubernetes service-account
// token read afresh from a file (projected tokens rotate) or from a function,
// sends the CSR as PEM and returns the parsed chain and trust bundle. Errors
// from the CA keep their gRPC status (status.Code works on them).
package caclient
