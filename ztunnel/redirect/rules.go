package redirect

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family inet, so IPv4 and IPv6) that holds
// every capture rule inside a pod. Ambit never touches another table.
const TableName = "ambit"

// Chains of the table.
const (
	// OutboundChain is a nat chain on the output hook.
	OutboundChain = "outbound"
	// InboundChain is a nat chain on the prerouting hook.
	InboundChain = "inbound"
	// BypassOutChain and BypassInChain are filter chains at raw priority
	// (before conntrack) on the output and prerouting hooks. They take out
	// of connection tracking the traffic the nat chains never rewrite:
	// ztunnel's own connections (HBONE in and out, its connections to the
	// pod's application and to peers outside the mesh) and the pod talking
	// to itself on its own addresses. That spares conntrack's lookup and
	// state update on each of those packets and half the conntrack entries
	// of a meshed connection; the redirected connections (the application
	// to 15001, plaintext to 15006) stay tracked, as NAT needs.
	BypassOutChain = "conntrack-bypass-out"
	BypassInChain  = "conntrack-bypass-in"
)

// Mark is ztunnel's socket mark (SO_MARK), compared under MarkMask: sockets
// carrying it are never redirected. 0x539 (1337) is the value Istio's ambient
// mode uses, so a node running both does not need two conventions.
const (
	Mark     uint32 = 0x539
	MarkMask uint32 = 0xfff
)

// SourceMark is the socket mark of ztunnel's connections to the pod's
// application that carry the client's address as their source (IP_TRANSPARENT,
// Dialer.DialFrom). With Config.OriginalSource, a policy routing rule
// (fwmark SourceMark/MarkMask, priority SourceRulePriority) sends packets
// carrying it to SourceRouteTable, whose only route (`local default dev lo`)
// delivers them locally, and the namespace's net.ipv4.tcp_fwmark_accept is
// on, so the application's socket accepted from such a connection inherits
// the mark: its replies, addressed to the client, reach ztunnel's socket
// instead of the network. It lies under MarkMask but differs from Mark.
const (
	SourceMark         uint32 = 0x53a
	SourceRouteTable   int    = 1337
	SourceRulePriority int    = 32764
)

// Link-local addresses a node may SNAT kubelet's probes to before they enter
// the pod (Istio ambient's convention). They are always among the exempted
// probe sources.
var (
	ProbeSNATv4 = netip.MustParsePrefix("169.254.7.127/32")
	ProbeSNATv6 = netip.MustParsePrefix("fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128")
)

// Config chooses the capture rules of one pod. The zero value is usable.
type Config struct {
	// ProbeSources are the sources whose inbound TCP is not captured: where
	// kubelet's probes come from, as the pod sees them (the node's address on
	// the pod network, usually the pod's default gateway). ProbeSNATv4 and
	// ProbeSNATv6 are always added.
	ProbeSources []netip.Prefix
	// Mark and MarkMask select ztunnel's sockets; zero means Mark and
	// MarkMask.
	Mark, MarkMask uint32
	// NoConntrackBypass leaves every connection of the pod tracked: no
	// BypassOutChain/BypassInChain. For pods whose own firewall rules
	// match on conntrack state; it costs CPU and latency on every packet
	// ztunnel carries.
	NoConntrackBypass bool
	// OriginalSource installs what lets ztunnel connect to the application
	// from the client's address (Dialer.DialFrom): the policy routing of
	// SourceMark and net.ipv4.tcp_fwmark_accept (see SourceMark). Without it
	// the application sees every connection ztunnel delivers come from the
	// pod's own address.
	OriginalSource bool
	// DNSCapture redirects the pod's DNS queries over UDP (destination port
	// 53, any address but loopback) to DNSPort, where ztunnel answers the
	// names of the mesh's services and forwards the others. DNS over TCP
	// is captured like any TCP.
	DNSCapture bool
}

func (c Config) mark() (mark, mask uint32) {
	mark, mask = c.Mark, c.MarkMask
	if mark == 0 {
		mark = Mark
	}
	if mask == 0 {
		mask = MarkMask
	}
	return mark, mask
}

// ruleSpec is one rule before it goes to the kernel.
type ruleSpec struct {
	chain   string
	comment string
	exprs   []expr.Any
}

// table is the Ambit table.
func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

// chains are the base chains: the conntrack bypass at raw priority, the
// redirection at the usual destination-NAT priority.
func chains(t *nftables.Table) []*nftables.Chain {
	return []*nftables.Chain{
		{Name: BypassOutChain, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRaw},
		{Name: BypassInChain, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw},
		{Name: OutboundChain, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest},
		{Name: InboundChain, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest},
	}
}

// buildRules returns the rules of both chains, in order. Nat chains see only
// the first packet of a connection; replies and later packets follow
// conntrack.
func buildRules(cfg Config) ([]ruleSpec, error) {
	mark, mask := cfg.mark()
	if mark&^mask != 0 {
		return nil, fmt.Errorf("redirect: mark %#x has bits outside mask %#x", mark, mask)
	}
	probes := append([]netip.Prefix{ProbeSNATv4, ProbeSNATv6}, cfg.ProbeSources...)
	seen := map[netip.Prefix]bool{}

	// The original source adds no rule: its packets (ztunnel to the
	// application and back) all go over lo, where the rules for the pod
	// talking to itself take them. But ztunnel's other sockets must not
	// carry a mark its routing rule matches: they would be delivered
	// locally instead of reaching their peers.
	if cfg.OriginalSource && mark&MarkMask == SourceMark {
		return nil, fmt.Errorf("redirect: ztunnel's mark %#x is the original-source mark %#x/%#x", mark, SourceMark, MarkMask)
	}
	var bypass []ruleSpec
	if !cfg.NoConntrackBypass {
		bypass = bypassRules(mark, mask)
	}
	out := []ruleSpec{
		{OutboundChain, fmt.Sprintf("ztunnel's own sockets (mark %#x/%#x)", mark, mask),
			concat(matchMark(mark, mask), accept())},
		{OutboundChain, "traffic routed over loopback (to the pod itself)",
			concat(matchIfname(expr.MetaKeyOIFNAME, "lo"), accept())},
		{OutboundChain, "loopback destination 127.0.0.0/8",
			concat(matchAddr(false, netip.MustParsePrefix("127.0.0.0/8")), accept())},
		{OutboundChain, "loopback destination ::1",
			concat(matchAddr(false, netip.MustParsePrefix("::1/128")), accept())},
		{OutboundChain, fmt.Sprintf("outbound TCP to ztunnel :%d", OutboundPort),
			concat(matchTCP(), redirectTo(OutboundPort))},
	}
	if cfg.DNSCapture {
		out = append(out, ruleSpec{OutboundChain, fmt.Sprintf("DNS over UDP (udp dport 53) to ztunnel :%d", DNSPort),
			concat(matchUDP(), matchDport(53), redirectTo(DNSPort))})
	}
	in := []ruleSpec{
		{InboundChain, "arrived over loopback",
			concat(matchIfname(expr.MetaKeyIIFNAME, "lo"), accept())},
	}
	for _, p := range probes {
		if !p.IsValid() {
			return nil, fmt.Errorf("redirect: invalid probe source prefix %v", p)
		}
		p = p.Masked()
		if p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return nil, fmt.Errorf("redirect: probe source %v: zoned or IPv4-mapped prefixes are not supported", p)
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		in = append(in, ruleSpec{InboundChain, "kubelet probes from " + p.String(),
			concat(matchAddr(true, p), matchTCP(), accept())})
	}
	in = append(in,
		ruleSpec{InboundChain, fmt.Sprintf("HBONE (tcp dport %d)", HBONEPort),
			concat(matchTCP(), matchDport(HBONEPort), accept())},
		ruleSpec{InboundChain, fmt.Sprintf("inbound TCP to ztunnel :%d", InboundPort),
			concat(matchTCP(), redirectTo(InboundPort))},
	)
	return slices.Concat(bypass, out, in), nil
}

// bypassRules are the rules of BypassOutChain and BypassInChain. None of
// them matches a packet the nat chains would rewrite, or its reply:
//   - ztunnel's sockets carry the mark (its HBONE listener too, so the
//     connections it accepts do), and the nat chains accept marked packets;
//     their replies are found by looking up the socket they are addressed
//     to, not by port, so a packet from outside with source port 15008
//     still meets the inbound redirection;
//   - HBONE to the pod (tcp dport 15008) is accepted by the inbound chain;
//   - the pod talking to itself goes over lo, which both nat chains accept,
//     while the redirected connections' replies (from 127.0.0.1 / ::1, the
//     REDIRECT target of locally generated packets) stay tracked.
func bypassRules(mark, mask uint32) []ruleSpec {
	own := fmt.Sprintf("(mark %#x/%#x)", mark, mask)
	loop4, loop6 := netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")
	return []ruleSpec{
		{BypassOutChain, "from ztunnel's own sockets " + own,
			concat(matchMark(mark, mask), notrack())},
		{BypassOutChain, "the pod to itself over IPv4 (lo, not 127.0.0.0/8)",
			concat(matchIfname(expr.MetaKeyOIFNAME, "lo"), matchTCP(),
				matchAddrOp(true, loop4, expr.CmpOpNeq), matchAddrOp(false, loop4, expr.CmpOpNeq), notrack())},
		{BypassOutChain, "the pod to itself over IPv6 (lo, not ::1)",
			concat(matchIfname(expr.MetaKeyOIFNAME, "lo"), matchTCP(),
				matchAddrOp(true, loop6, expr.CmpOpNeq), matchAddrOp(false, loop6, expr.CmpOpNeq), notrack())},
		// Looped-back packets were classified on the output hook, and an
		// untracked one stays untracked: no second look (the socket lookup
		// below is the dearest rule).
		{BypassInChain, "arrived over loopback (decided on output)",
			concat(matchIfname(expr.MetaKeyIIFNAME, "lo"), []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})},
		{BypassInChain, fmt.Sprintf("HBONE to this pod (tcp dport %d)", HBONEPort),
			concat(matchTCP(), matchDport(HBONEPort), notrack())},
		{BypassInChain, "to ztunnel's own sockets " + own + ": replies to its connections",
			concat(matchTCP(), matchSocketMark(mark, mask), notrack())},
	}
}

// stoppedRule is the only rule left by StopCapture: it redirects nothing,
// and its ct expression keeps connection tracking on in the namespace.
func stoppedRule() ruleSpec {
	return ruleSpec{OutboundChain, "capture stopped: new connections go out as they are; keeps conntrack on for those redirected before",
		[]expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binary.NativeEndian.AppendUint32(nil, expr.CtStateBitNEW), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}}
}

// notrack counts the packet and takes it out of connection tracking.
func notrack() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Notrack{}, &expr.Verdict{Kind: expr.VerdictAccept}}
}

func concat(parts ...[]expr.Any) []expr.Any {
	var all []expr.Any
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

// accept counts the packet (one per connection in a nat chain) and ends this
// chain's evaluation without NAT.
func accept() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}}
}

func matchMark(mark, mask uint32) []expr.Any {
	return append([]expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}}, maskedMark(mark, mask)...)
}

// matchSocketMark matches the mark of the local socket the packet is
// addressed to; a packet for no local socket does not match.
func matchSocketMark(mark, mask uint32) []expr.Any {
	return append([]expr.Any{&expr.Socket{Key: expr.SocketKeyMark, Register: 1}}, maskedMark(mark, mask)...)
}

// maskedMark compares register 1, a mark in host order, under mask.
func maskedMark(mark, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, mark)},
	}
}

// ifname pads an interface name to IFNAMSIZ, as the kernel compares it.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func matchIfname(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
	}
}

func matchTCP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
}

func matchUDP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
	}
}

func matchDport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// Offsets of the addresses in the IPv4 and IPv6 headers.
const (
	ip4Saddr, ip4Daddr = 12, 16
	ip6Saddr, ip6Daddr = 8, 24
)

// matchAddr matches the source (src) or destination address against p,
// checking the packet's family first as an inet table must.
func matchAddr(src bool, p netip.Prefix) []expr.Any { return matchAddrOp(src, p, expr.CmpOpEq) }

// matchAddrOp is matchAddr with the comparison op (in or, with CmpOpNeq,
// not in p); a packet of the other family never matches.
func matchAddrOp(src bool, p netip.Prefix, op expr.CmpOp) []expr.Any {
	a := p.Addr()
	proto, off := byte(unix.NFPROTO_IPV6), uint32(ip6Daddr)
	if src {
		off = ip6Saddr
	}
	if a.Is4() {
		proto, off = unix.NFPROTO_IPV4, ip4Daddr
		if src {
			off = ip4Saddr
		}
	}
	n := uint32(a.BitLen() / 8)
	es := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
	}
	if p.Bits() < a.BitLen() {
		es = append(es, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n,
			Mask: prefixMask(p.Bits(), int(n)), Xor: make([]byte, n)})
	}
	return append(es, &expr.Cmp{Op: op, Register: 1, Data: a.AsSlice()})
}

// prefixMask is a network-order mask of bits ones in n bytes.
func prefixMask(bits, n int) []byte {
	m := make([]byte, n)
	for i := 0; i < bits; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// redirectTo rewrites the destination to the local address (loopback for
// locally generated packets, the receiving interface's primary address
// otherwise) and port.
func redirectTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

// comment encodes a rule comment the way nft does, so `nft list` shows it.
func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }
