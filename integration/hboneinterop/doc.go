// Package hboneinterop holds the wire-compatibility tests between Ambit's
// HBONE (pkg/hbone) and Istio's own Go HBONE implementation (istio.io/istio/pkg/hbone,
// a test-only dependency of this module).
package hboneinterop
