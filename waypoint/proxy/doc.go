// Package proxy is the waypoint's L7 request engine: an http.Handler that
// routes each request with a compiled route.Table, applies the rule's
// filters and fault injection, picks a weighted backend and one of its
// healthy endpoints, and forwards the request with per-try timeouts,
// retries (exponential backoff with full jitter, bounded by a retry
// budget), outlier detection and request limits.
//
// The Proxy knows nothing of HBONE: the service and port a request was sent
// to come from its context (WithDestination) or a Destination hook, the
// endpoints of a service from a Resolver, and the connection to an endpoint
// from a Transport factory. The waypoint binary plugs its tunnel in there;
// tests use loopback HTTP.
//
// The client comes from the context too (WithSource): its verified
// identity feeds the Authorize hook, which runs before routing and answers
// 403 for a denied request.
//
// Every request ends with a Result handed to the OnResult hook, which is
// where metrics, access logs and spans attach.
package proxy
