// Package filter compiles and applies the Gateway API HTTPRoute filters a
// waypoint supports: request and response header modifiers, request
// redirects, URL rewrites, request mirrors and Ambit's fault injection.
//
// Compile validates a rule's (or a backend's) filters from the wire config
// once; the resulting Chain is immutable and safe for concurrent use. The
// functions that apply a filter are pure transformations of an
// *http.Request, an http.Header or a decision drawn from an injected random
// source, so the proxy core decides when they run and tests need no server.
package filter
