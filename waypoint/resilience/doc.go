// Package resilience holds the waypoint's policies that protect backends
// and clients: retries (Gateway API HTTPRouteRetry) with exponential
// backoff and full jitter, a retry budget that stops retries from
// amplifying an outage, outlier detection that ejects failing endpoints,
// and request limits (circuit breaking).
//
// Every type is safe for concurrent use. Time and randomness come from hook
// fields (Now, Rand) so that tests can drive them; a nil hook means the
// real clock or math/rand/v2.
package resilience
