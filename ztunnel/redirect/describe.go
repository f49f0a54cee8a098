package redirect

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// describeRule renders an installed rule for the admin dump.
func describeRule(r *nftables.Rule) RuleInfo {
	ri := RuleInfo{Handle: r.Handle, Expr: describe(r.Exprs)}
	if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
		ri.Comment = c
	}
	for _, e := range r.Exprs {
		if c, ok := e.(*expr.Counter); ok {
			ri.Packets, ri.Bytes = c.Packets, c.Bytes
		}
	}
	return ri
}

func hookName(h *nftables.ChainHook) string {
	if h == nil {
		return ""
	}
	switch *h {
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	case *nftables.ChainHookInput:
		return "input"
	case *nftables.ChainHookForward:
		return "forward"
	case *nftables.ChainHookOutput:
		return "output"
	case *nftables.ChainHookPostrouting:
		return "postrouting"
	}
	return fmt.Sprintf("hook%d", *h)
}

// describe renders the expressions this package generates in nft-like
// syntax; anything else is shown by its Go type, so the output never fails.
func describe(es []expr.Any) string {
	var parts []string
	var load string // what register 1 holds: "meta mark", "ip daddr", ...
	var mask []byte
	var imm []byte
	udp := false // the rule matched meta l4proto udp: a port is udp's
	for _, e := range es {
		switch e := e.(type) {
		case *expr.Meta:
			load, mask = metaName(e.Key), nil
		case *expr.Socket:
			load, mask = "socket mark", nil
			if e.Key != expr.SocketKeyMark {
				load = fmt.Sprintf("socket key%d", e.Key)
			}
		case *expr.Ct:
			load, mask = "ct state", nil
			if e.Key != expr.CtKeySTATE {
				load = fmt.Sprintf("ct key%d", e.Key)
			}
		case *expr.Notrack:
			parts = append(parts, "notrack")
		case *expr.Payload:
			load, mask = payloadName(e), nil
			if load == "tcp dport" && udp {
				load = "udp dport"
			}
		case *expr.Bitwise:
			mask = e.Mask
		case *expr.Cmp:
			if load == "meta l4proto" && len(e.Data) == 1 && e.Data[0] == unix.IPPROTO_UDP && e.Op == expr.CmpOpEq {
				udp = true
			}
			parts = append(parts, describeCmp(load, mask, e))
		case *expr.Counter:
			parts = append(parts, fmt.Sprintf("counter packets %d bytes %d", e.Packets, e.Bytes))
		case *expr.Immediate:
			imm = e.Data
		case *expr.Redir:
			if len(imm) == 2 {
				parts = append(parts, fmt.Sprintf("redirect to :%d", binary.BigEndian.Uint16(imm)))
			} else {
				parts = append(parts, "redirect")
			}
		case *expr.Verdict:
			parts = append(parts, verdictName(e.Kind))
		default:
			parts = append(parts, fmt.Sprintf("%T", e))
		}
	}
	return strings.Join(parts, " ")
}

func metaName(k expr.MetaKey) string {
	switch k {
	case expr.MetaKeyMARK:
		return "meta mark"
	case expr.MetaKeyIIFNAME:
		return "iifname"
	case expr.MetaKeyOIFNAME:
		return "oifname"
	case expr.MetaKeyL4PROTO:
		return "meta l4proto"
	case expr.MetaKeyNFPROTO:
		return "meta nfproto"
	}
	return fmt.Sprintf("meta key%d", k)
}

func payloadName(p *expr.Payload) string {
	switch {
	case p.Base == expr.PayloadBaseNetworkHeader && p.Len == 4 && p.Offset == ip4Saddr:
		return "ip saddr"
	case p.Base == expr.PayloadBaseNetworkHeader && p.Len == 4 && p.Offset == ip4Daddr:
		return "ip daddr"
	case p.Base == expr.PayloadBaseNetworkHeader && p.Len == 16 && p.Offset == ip6Saddr:
		return "ip6 saddr"
	case p.Base == expr.PayloadBaseNetworkHeader && p.Len == 16 && p.Offset == ip6Daddr:
		return "ip6 daddr"
	case p.Base == expr.PayloadBaseTransportHeader && p.Len == 2 && p.Offset == 2:
		return "tcp dport"
	}
	return fmt.Sprintf("payload base%d @%d,%d", p.Base, p.Offset, p.Len)
}

func describeCmp(load string, mask []byte, c *expr.Cmp) string {
	op := "=="
	switch c.Op {
	case expr.CmpOpEq:
	case expr.CmpOpNeq:
		op = "!="
	default:
		op = fmt.Sprintf("op%d", c.Op)
	}
	d := c.Data
	switch load {
	case "meta mark", "socket mark":
		if len(d) == 4 {
			v := fmt.Sprintf("%#x", binary.NativeEndian.Uint32(d))
			if len(mask) == 4 {
				return fmt.Sprintf("%s & %#x %s %s", load, binary.NativeEndian.Uint32(mask), op, v)
			}
			return fmt.Sprintf("%s %s %s", load, op, v)
		}
	case "ct state":
		// ct state new is a mask test: state & new != 0.
		if len(d) == 4 && len(mask) == 4 && c.Op == expr.CmpOpNeq && binary.NativeEndian.Uint32(d) == 0 &&
			binary.NativeEndian.Uint32(mask) == expr.CtStateBitNEW {
			return "ct state new"
		}
	case "iifname", "oifname":
		return fmt.Sprintf("%s %s %q", load, op, strings.TrimRight(string(d), "\x00"))
	case "meta l4proto":
		if len(d) == 1 && d[0] == unix.IPPROTO_TCP {
			return "meta l4proto " + op + " tcp"
		}
		if len(d) == 1 && d[0] == unix.IPPROTO_UDP {
			return "meta l4proto " + op + " udp"
		}
	case "meta nfproto":
		if len(d) == 1 {
			switch d[0] {
			case unix.NFPROTO_IPV4:
				return "meta nfproto " + op + " ipv4"
			case unix.NFPROTO_IPV6:
				return "meta nfproto " + op + " ipv6"
			}
		}
	case "ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr":
		if a, ok := netip.AddrFromSlice(d); ok {
			bits := a.BitLen()
			if len(mask) == len(d) {
				bits = 0
				for _, b := range mask {
					for ; b&0x80 != 0; b <<= 1 {
						bits++
					}
				}
			}
			return fmt.Sprintf("%s %s %s", load, op, netip.PrefixFrom(a, bits))
		}
	case "tcp dport", "udp dport":
		if len(d) == 2 {
			return fmt.Sprintf("%s %s %d", load, op, binary.BigEndian.Uint16(d))
		}
	}
	return fmt.Sprintf("%s %s 0x%x", load, op, d)
}

func verdictName(k expr.VerdictKind) string {
	switch k {
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictReturn:
		return "return"
	}
	return fmt.Sprintf("verdict %d", k)
}
