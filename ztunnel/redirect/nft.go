package redirect

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/google/nftables"
)

// Install installs (or replaces) the capture rules in the namespace, in one
// netlink transaction: the table is created, deleted and created again with
// its chains and rules, so the pod is never half-captured and a second
// Install leaves exactly one copy of each rule. Other tables are not touched.
// With cfg.OriginalSource, the policy routing of SourceMark is installed
// first.
//
// Install returns the configuration it installed. A namespace or kernel that
// refuses the original source (policy routing, the sysctl) or the conntrack
// bypass (nftables' socket expression or its mark key) gets the capture
// rules without them, and a warning: the returned Config says so
// (OriginalSource false, NoConntrackBypass true), and ztunnel must then not
// connect from the client's address.
func Install(ctx context.Context, ns *Netns, cfg Config) (Config, error) {
	return install(ctx, ns, cfg, dial)
}

// install is Install with the netlink connection's dialer (tests replace it).
func install(ctx context.Context, ns *Netns, cfg Config, dial func(*Netns) (*nftables.Conn, error)) (Config, error) {
	if err := ctx.Err(); err != nil {
		return cfg, err
	}
	// What to try, in order: what was asked for, then without the
	// original source, then without the bypass either.
	tries := []Config{cfg}
	if cfg.OriginalSource {
		c := cfg
		c.OriginalSource = false
		tries = append(tries, c)
	}
	if !cfg.NoConntrackBypass {
		c := tries[len(tries)-1]
		c.NoConntrackBypass = true
		tries = append(tries, c)
	}
	var first error
	for i, c := range tries {
		err := installConfig(ns, c, dial)
		if err == nil {
			if i > 0 {
				slog.WarnContext(ctx, "redirection installed without some features", "netns", ns.Path(),
					"originalSource", c.OriginalSource, "conntrackBypass", !c.NoConntrackBypass, "err", first)
			} else {
				slog.DebugContext(ctx, "redirection installed", "netns", ns.Path())
			}
			if !c.OriginalSource && cfg.OriginalSource {
				if rerr := sourceRouting.remove(ns); rerr != nil {
					slog.WarnContext(ctx, "redirection: could not remove the original-source routing", "netns", ns.Path(), "err", rerr)
				}
			}
			return c, nil
		}
		if first == nil {
			first = err
		}
		if _, ok := err.(*buildError); ok {
			return cfg, err
		}
	}
	return cfg, first
}

// buildError is a configuration the rules cannot be built from: no fallback
// helps.
type buildError struct{ err error }

func (e *buildError) Error() string { return e.err.Error() }
func (e *buildError) Unwrap() error { return e.err }

// installConfig installs cfg's routing and rules.
func installConfig(ns *Netns, cfg Config, dial func(*Netns) (*nftables.Conn, error)) error {
	specs, err := buildRules(cfg)
	if err != nil {
		return &buildError{err}
	}
	if cfg.OriginalSource {
		if err := sourceRouting.install(ns); err != nil {
			return err
		}
	}
	return installSpecs(ns, specs, dial)
}

// sourceRouting installs and removes the original-source routing (tests
// replace it).
var sourceRouting = struct{ install, remove func(*Netns) error }{installSourceRouting, removeSourceRouting}

// installSpecs runs the replace transaction for specs.
func installSpecs(ns *Netns, specs []ruleSpec, dial func(*Netns) (*nftables.Conn, error)) error {
	conn, err := dial(ns)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	queueInstall(conn, specs)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("redirect: install nftables rules in %s: %w", ns, err)
	}
	return nil
}

// queueInstall adds the replace transaction to conn's batch.
func queueInstall(conn *nftables.Conn, specs []ruleSpec) {
	t := table()
	conn.AddTable(t)
	conn.DelTable(t) // with the AddTable before: no error if it did not exist
	conn.AddTable(t)
	used := map[string]bool{}
	for _, s := range specs {
		used[s.chain] = true
	}
	byName := map[string]*nftables.Chain{}
	for _, c := range chains(t) {
		if used[c.Name] {
			byName[c.Name] = conn.AddChain(c)
		}
	}
	for _, s := range specs {
		conn.AddRule(&nftables.Rule{Table: t, Chain: byName[s.chain], Exprs: s.exprs, UserData: comment(s.comment)})
	}
}

// StopCapture ends the capture in the namespace, in one netlink
// transaction, and keeps the translation of the connections redirected
// before: every rule of the table is deleted and the outbound chain gets one
// rule that redirects nothing ("ct state new accept"). That rule is what
// keeps connection tracking on in the namespace: the kernel tracks
// connections in a network namespace only while some rule there uses
// conntrack (the redirect rules did), and an established connection's
// address translation, held by conntrack, is applied only while it is
// tracked. So whatever ztunnel sends on those connections while it closes
// them (their FIN) still reaches the application from the address it
// connected to; with the rules gone it would come from ztunnel's port,
// match no socket and be lost, leaving the application with a connection
// that never ends. The original-source routing stays too: the connections
// that drain need it. Call Remove once they are closed. A namespace without
// the table is left as it is.
func StopCapture(ctx context.Context, ns *Netns) error {
	return withConn(ctx, ns, func(conn *nftables.Conn) error {
		cs, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return fmt.Errorf("redirect: list chains in %s: %w", ns, err)
		}
		var out *nftables.Chain
		n := 0
		for _, c := range cs {
			if c.Table == nil || c.Table.Name != TableName {
				continue
			}
			conn.FlushChain(c)
			n++
			if c.Name == OutboundChain {
				out = c
			}
		}
		if n == 0 {
			return nil
		}
		if out != nil {
			s := stoppedRule()
			conn.AddRule(&nftables.Rule{Table: out.Table, Chain: out, Exprs: s.exprs, UserData: comment(s.comment)})
		}
		if err := conn.Flush(); err != nil {
			return fmt.Errorf("redirect: stop capture in %s: %w", ns, err)
		}
		slog.DebugContext(ctx, "redirection stopped", "netns", ns.Path(), "chains", n)
		return nil
	})
}

// Remove deletes the capture rules (the whole table) and the
// original-source routing from the namespace, turns
// net.ipv4.tcp_fwmark_accept off, and empties the namespace's conntrack
// table. It succeeds when they are not installed.
//
// Why the conntrack table: without the rules nothing tracks connections in
// the namespace any more, so an entry still there stays as it was. A
// connection opened while the capture was stopped (tracked, untranslated)
// that ends after Remove would keep an "established" entry for days, and a
// connection that reuses its addresses and ports once the pod is captured
// again would match it and leave the pod untranslated, bypassing ztunnel.
// The pod's own stateful rules, if it has any, pick up open connections
// again from their next packet.
func Remove(ctx context.Context, ns *Netns) error {
	return withConn(ctx, ns, func(conn *nftables.Conn) error {
		t := table()
		conn.AddTable(t)
		conn.DelTable(t)
		if err := conn.Flush(); err != nil {
			return fmt.Errorf("redirect: remove nftables rules in %s: %w", ns, err)
		}
		if err := removeSourceRouting(ns); err != nil {
			return err
		}
		if err := flushConntrack(ns); err != nil {
			return err
		}
		slog.DebugContext(ctx, "redirection removed", "netns", ns.Path())
		return nil
	})
}

// Ruleset is what Rules found installed, for the admin dump.
type Ruleset struct {
	// Table is "inet ambit".
	Table string `json:"table"`
	// Installed is false when the table does not exist.
	Installed bool `json:"installed"`
	// Chains of the table, in kernel order.
	Chains []ChainInfo `json:"chains,omitempty"`
}

// ChainInfo describes one chain of the table.
type ChainInfo struct {
	Name     string     `json:"name"`
	Type     string     `json:"type"`
	Hook     string     `json:"hook"`
	Priority int32      `json:"priority"`
	Rules    []RuleInfo `json:"rules"`
}

// RuleInfo describes one installed rule.
type RuleInfo struct {
	Handle  uint64 `json:"handle"`
	Comment string `json:"comment,omitempty"`
	// Expr is the rule in nft-like syntax (for people, not for parsing).
	Expr string `json:"expr"`
	// Packets counts the connections that matched (nat chains see one packet
	// per connection).
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Rules lists the capture rules installed in the namespace.
func Rules(ctx context.Context, ns *Netns) (*Ruleset, error) {
	var rs *Ruleset
	err := withConn(ctx, ns, func(conn *nftables.Conn) (err error) {
		rs, err = listRules(conn, ns)
		return err
	})
	return rs, err
}

// listRules is Rules on an open connection.
func listRules(conn *nftables.Conn, ns *Netns) (*Ruleset, error) {
	rs := &Ruleset{Table: "inet " + TableName}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("redirect: list tables in %s: %w", ns, err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			rs.Installed = true
		}
	}
	if !rs.Installed {
		return rs, nil
	}
	cs, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("redirect: list chains in %s: %w", ns, err)
	}
	for _, c := range cs {
		if c.Table == nil || c.Table.Name != TableName {
			continue
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			return nil, fmt.Errorf("redirect: list rules of %s in %s: %w", c.Name, ns, err)
		}
		ci := ChainInfo{Name: c.Name, Type: string(c.Type), Hook: hookName(c.Hooknum), Rules: []RuleInfo{}}
		if c.Priority != nil {
			ci.Priority = int32(*c.Priority)
		}
		for _, r := range rules {
			ci.Rules = append(ci.Rules, describeRule(r))
		}
		rs.Chains = append(rs.Chains, ci)
	}
	return rs, nil
}

// withConn runs fn with a netlink connection bound to the namespace, unless
// ctx is done.
func withConn(ctx context.Context, ns *Netns, fn func(*nftables.Conn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	conn, err := dial(ns)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	return fn(conn)
}

// dial opens a netlink connection bound to the namespace.
func dial(ns *Netns) (*nftables.Conn, error) {
	if ns == nil {
		return nil, fmt.Errorf("redirect: nil netns")
	}
	conn, err := nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return nil, fmt.Errorf("redirect: nftables netlink in %s: %w", ns, err)
	}
	return conn, nil
}

func closeConn(conn *nftables.Conn) {
	if err := conn.CloseLasting(); err != nil {
		slog.Debug("close nftables netlink", "err", err)
	}
}
