// Package echo is the TCP echo upstream shared by the integration tests: it
// echoes every connection until the peer half-closes, then half-closes back,
// so tests can check half-close propagation and byte-exact transfers.
package echo
