package translate

import (
	"cmp"
	"slices"
	"time"
)

// Path match kinds in precedence order (higher first). Gateway API leaves
// regular expressions implementation-specific; like Envoy Gateway, Ambit
// ranks them between exact and prefix matches, longer expressions first.
const (
	pathPrefix = 1
	pathRegex  = 2
	pathExact  = 3
)

// Precedence is what orders rules attached to one Service port.
//
// HTTPRoute (Gateway API HTTPRouteRule.matches): exact path, then regular
// expression, then prefix (longer values first within a kind), then a
// method match, then more header matches, then more query parameter
// matches. GRPCRoute (GRPCRouteRule.matches): more characters in the
// service, then in the method, then more header matches. Ties: the older
// route, then "<namespace>/<name>" alphabetically, then rule order, then
// match order within the rule.
type Precedence struct {
	PathKind   int
	PathLength int
	Method     bool
	Headers    int
	Query      int
	ServiceLen int
	MethodLen  int
	Created    time.Time
	Route      string
	Rule       int
	Match      int
}

// comparePrecedence orders a before b (negative) when a takes precedence.
func comparePrecedence(a, b Precedence) int {
	boolCmp := func(x, y bool) int {
		switch {
		case x == y:
			return 0
		case x:
			return -1
		}
		return 1
	}
	return cmp.Or(
		-cmp.Compare(a.PathKind, b.PathKind),
		-cmp.Compare(a.PathLength, b.PathLength),
		-cmp.Compare(a.ServiceLen, b.ServiceLen),
		-cmp.Compare(a.MethodLen, b.MethodLen),
		boolCmp(a.Method, b.Method),
		-cmp.Compare(a.Headers, b.Headers),
		-cmp.Compare(a.Query, b.Query),
		a.Created.Compare(b.Created),
		cmp.Compare(a.Route, b.Route),
		cmp.Compare(a.Rule, b.Rule),
		cmp.Compare(a.Match, b.Match),
	)
}

// sortRules sorts rules into precedence order.
func sortRules(rules []*RouteRule) {
	slices.SortStableFunc(rules, func(a, b *RouteRule) int { return comparePrecedence(a.Precedence, b.Precedence) })
}
