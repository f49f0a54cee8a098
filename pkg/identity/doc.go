// Package identity owns workload identity in Ambit: SPIFFE IDs of the form
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, and (with the CA
// work) keys, CSRs, certificate rotation and the TLS configs that check a
// peer's SPIFFE ID.
package identity
