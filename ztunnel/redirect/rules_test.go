package redirect

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

func describeAll(specs []ruleSpec) map[string][]string {
	got := map[string][]string{}
	for _, s := range specs {
		got[s.chain] = append(got[s.chain], describe(s.exprs))
	}
	return got
}

func TestBuildRulesDefault(t *testing.T) {
	specs, err := buildRules(Config{ProbeSources: []netip.Prefix{netip.MustParsePrefix("10.250.1.1/32")}})
	if err != nil {
		t.Fatal(err)
	}
	got := describeAll(specs)
	want := map[string][]string{
		BypassOutChain: {
			"meta mark & 0xfff == 0x539 counter packets 0 bytes 0 notrack accept",
			`oifname == "lo" meta l4proto == tcp meta nfproto == ipv4 ip saddr != 127.0.0.0/8 meta nfproto == ipv4 ip daddr != 127.0.0.0/8 counter packets 0 bytes 0 notrack accept`,
			`oifname == "lo" meta l4proto == tcp meta nfproto == ipv6 ip6 saddr != ::1/128 meta nfproto == ipv6 ip6 daddr != ::1/128 counter packets 0 bytes 0 notrack accept`,
		},
		BypassInChain: {
			`iifname == "lo" accept`,
			"meta l4proto == tcp tcp dport == 15008 counter packets 0 bytes 0 notrack accept",
			"meta l4proto == tcp socket mark & 0xfff == 0x539 counter packets 0 bytes 0 notrack accept",
		},
		OutboundChain: {
			"meta mark & 0xfff == 0x539 counter packets 0 bytes 0 accept",
			`oifname == "lo" counter packets 0 bytes 0 accept`,
			"meta nfproto == ipv4 ip daddr == 127.0.0.0/8 counter packets 0 bytes 0 accept",
			"meta nfproto == ipv6 ip6 daddr == ::1/128 counter packets 0 bytes 0 accept",
			"meta l4proto == tcp counter packets 0 bytes 0 redirect to :15001",
		},
		InboundChain: {
			`iifname == "lo" counter packets 0 bytes 0 accept`,
			"meta nfproto == ipv4 ip saddr == 169.254.7.127/32 meta l4proto == tcp counter packets 0 bytes 0 accept",
			"meta nfproto == ipv6 ip6 saddr == fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 meta l4proto == tcp counter packets 0 bytes 0 accept",
			"meta nfproto == ipv4 ip saddr == 10.250.1.1/32 meta l4proto == tcp counter packets 0 bytes 0 accept",
			"meta l4proto == tcp tcp dport == 15008 counter packets 0 bytes 0 accept",
			"meta l4proto == tcp counter packets 0 bytes 0 redirect to :15006",
		},
	}
	for _, c := range []string{BypassOutChain, BypassInChain, OutboundChain, InboundChain} {
		if strings.Join(got[c], "\n") != strings.Join(want[c], "\n") {
			t.Errorf("chain %s:\ngot:\n%s\nwant:\n%s", c, strings.Join(got[c], "\n"), strings.Join(want[c], "\n"))
		}
	}
	for _, s := range specs {
		if s.comment == "" {
			t.Errorf("rule %q has no comment", describe(s.exprs))
		}
	}
}

// TestBuildRulesDNSCapture: DNS capture adds one rule, last in the outbound
// chain (after the loopback exemptions; TCP to 53 is taken by the rule
// before it), and changes nothing else.
func TestBuildRulesDNSCapture(t *testing.T) {
	without, err := buildRules(Config{})
	if err != nil {
		t.Fatal(err)
	}
	with, err := buildRules(Config{DNSCapture: true})
	if err != nil {
		t.Fatal(err)
	}
	a, b := describeAll(without), describeAll(with)
	want := append(slices.Clone(a[OutboundChain]), "meta l4proto == udp udp dport == 53 counter packets 0 bytes 0 redirect to :15053")
	if strings.Join(b[OutboundChain], "\n") != strings.Join(want, "\n") {
		t.Errorf("outbound chain with DNS capture:\n%s\nwant:\n%s", strings.Join(b[OutboundChain], "\n"), strings.Join(want, "\n"))
	}
	for _, c := range []string{BypassOutChain, BypassInChain, InboundChain} {
		if strings.Join(a[c], "\n") != strings.Join(b[c], "\n") {
			t.Errorf("chain %s changed with DNS capture", c)
		}
	}
}

// TestBuildRulesNoConntrackBypass: the option leaves only the nat chains.
func TestBuildRulesNoConntrackBypass(t *testing.T) {
	with, err := buildRules(Config{})
	if err != nil {
		t.Fatal(err)
	}
	without, err := buildRules(Config{NoConntrackBypass: true})
	if err != nil {
		t.Fatal(err)
	}
	a, b := describeAll(with), describeAll(without)
	if len(b[BypassOutChain])+len(b[BypassInChain]) != 0 || len(a[BypassOutChain]) == 0 || len(a[BypassInChain]) == 0 {
		t.Errorf("bypass rules: with %d/%d, without %d/%d", len(a[BypassOutChain]), len(a[BypassInChain]),
			len(b[BypassOutChain]), len(b[BypassInChain]))
	}
	for _, c := range []string{OutboundChain, InboundChain} {
		if strings.Join(a[c], "\n") != strings.Join(b[c], "\n") {
			t.Errorf("chain %s differs with the bypass:\n%s\nwithout:\n%s", c, strings.Join(a[c], "\n"), strings.Join(b[c], "\n"))
		}
	}
}

// TestBypassNeverMatchesRedirectedTraffic: no bypass rule matches by port
// alone except HBONE's destination port, which the inbound chain accepts
// anyway; the redirected connections' packets (unmarked, leaving by a pod
// interface, or their replies from a loopback address) match none.
func TestBypassNeverMatchesRedirectedTraffic(t *testing.T) {
	specs, err := buildRules(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		if s.chain != BypassOutChain && s.chain != BypassInChain {
			continue
		}
		d := describe(s.exprs)
		switch {
		case !strings.Contains(d, "notrack"):
		case strings.Contains(d, "mark & 0xfff == 0x539"): // ztunnel's sockets only
		case strings.Contains(d, `oifname == "lo"`) && strings.Contains(d, "saddr !=") && strings.Contains(d, "daddr !="):
		case strings.Contains(d, "tcp dport == 15008"):
		default:
			t.Errorf("bypass rule %q (%s) is not limited to ztunnel's sockets, the pod to itself or HBONE", d, s.comment)
		}
	}
}

func TestBuildRulesExpressions(t *testing.T) {
	specs, err := buildRules(Config{Mark: 0x10, MarkMask: 0xff,
		ProbeSources: []netip.Prefix{netip.MustParsePrefix("fd00:1::/64"), netip.MustParsePrefix("10.0.0.7/8")}})
	if err != nil {
		t.Fatal(err)
	}
	// The mark rule compares host-order bytes under the mask.
	var m []expr.Any
	for _, s := range specs {
		if s.chain == OutboundChain && strings.HasPrefix(s.comment, "ztunnel's own sockets") {
			m = s.exprs
		}
	}
	if meta, ok := m[0].(*expr.Meta); !ok || meta.Key != expr.MetaKeyMARK {
		t.Fatalf("first expression %#v, want meta mark", m[0])
	}
	bw := m[1].(*expr.Bitwise)
	cmp := m[2].(*expr.Cmp)
	if got := describe(m[:3]); got != "meta mark & 0xff == 0x10" {
		t.Errorf("mark rule %q", got)
	}
	if len(bw.Mask) != 4 || len(bw.Xor) != 4 || len(cmp.Data) != 4 {
		t.Errorf("mark widths: mask %d xor %d data %d", len(bw.Mask), len(bw.Xor), len(cmp.Data))
	}
	// The redirect loads the port big-endian into register 1.
	last := specs[len(specs)-1].exprs
	imm := last[len(last)-2].(*expr.Immediate)
	redir := last[len(last)-1].(*expr.Redir)
	if imm.Register != 1 || len(imm.Data) != 2 || imm.Data[0] != 15006>>8 || imm.Data[1] != 15006&0xff || redir.RegisterProtoMin != 1 {
		t.Errorf("redirect expressions %#v %#v", imm, redir)
	}
	got := strings.Join(describeAll(specs)[InboundChain], "\n")
	for _, w := range []string{"ip6 saddr == fd00:1::/64", "ip saddr == 10.0.0.0/8"} {
		if !strings.Contains(got, w) {
			t.Errorf("inbound chain lacks %q:\n%s", w, got)
		}
	}
	// The IPv6 prefix is matched under a 64-bit mask.
	for _, s := range specs {
		if strings.Contains(s.comment, "fd00:1::/64") {
			bw := s.exprs[3].(*expr.Bitwise)
			if bw.Len != 16 || bw.Mask[7] != 0xff || bw.Mask[8] != 0 {
				t.Errorf("IPv6 prefix mask %x", bw.Mask)
			}
		}
	}
}

func TestBuildRulesDeduplicatesProbeSources(t *testing.T) {
	specs, err := buildRules(Config{ProbeSources: []netip.Prefix{ProbeSNATv4, netip.MustParsePrefix("10.1.1.1/32"), netip.MustParsePrefix("10.1.1.1/32")}})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range specs {
		if strings.HasPrefix(s.comment, "kubelet probes") {
			n++
		}
	}
	if n != 3 { // SNATv4, SNATv6, 10.1.1.1
		t.Errorf("%d probe rules, want 3", n)
	}
}

func TestBuildRulesRejectsBadInput(t *testing.T) {
	for name, cfg := range map[string]Config{
		"invalid prefix":   {ProbeSources: []netip.Prefix{{}}},
		"mapped":           {ProbeSources: []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.1/128")}},
		"mark not in mask": {Mark: 0x1000, MarkMask: 0xfff},
	} {
		if _, err := buildRules(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestInstallBatch checks the netlink transaction without a kernel: the table
// is added, deleted and added again before chains and rules, so one batch
// replaces whatever was installed.
func TestInstallBatch(t *testing.T) {
	specs, err := buildRules(Config{})
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	conn, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		for _, m := range req {
			switch netlink.HeaderType(m.Header.Type) & 0xff {
			case unix.NFT_MSG_NEWTABLE:
				types = append(types, "newtable")
			case unix.NFT_MSG_DELTABLE:
				types = append(types, "deltable")
			case unix.NFT_MSG_NEWCHAIN:
				types = append(types, "newchain")
			case unix.NFT_MSG_NEWRULE:
				types = append(types, "newrule")
			}
		}
		return req, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	queueInstall(conn, specs)
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	want := []string{"newtable", "deltable", "newtable", "newchain", "newchain", "newchain", "newchain"}
	for range specs {
		want = append(want, "newrule")
	}
	if strings.Join(types, ",") != strings.Join(want, ",") {
		t.Errorf("batch %v, want %v", types, want)
	}
}

// The rule StopCapture leaves: it matches only new connections, accepts
// them (redirects nothing) and uses conntrack (the ct expression), which is
// its purpose.
func TestStoppedRule(t *testing.T) {
	s := stoppedRule()
	if s.chain != OutboundChain || s.comment == "" {
		t.Errorf("stopped rule in chain %q with comment %q, want %q with a comment", s.chain, s.comment, OutboundChain)
	}
	if got := describe(s.exprs); got != "ct state new accept" {
		t.Errorf("describe(stopped rule) = %q, want %q", got, "ct state new accept")
	}
	for _, e := range s.exprs {
		if _, ok := e.(*expr.Redir); ok {
			t.Errorf("the stopped rule redirects")
		}
	}
}

func TestDescribeUnknown(t *testing.T) {
	got := describe([]expr.Any{&expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: 1, Len: 1},
		&expr.Cmp{Op: expr.CmpOpGt, Data: []byte{7}}, &expr.Log{}, &expr.Verdict{Kind: expr.VerdictDrop}})
	if got != "payload base1 @1,1 op4 0x07 *expr.Log drop" {
		t.Errorf("describe = %q", got)
	}
}

func TestCommentRoundTrip(t *testing.T) {
	r := &nftables.Rule{UserData: comment("hello"), Exprs: []expr.Any{&expr.Counter{Packets: 3, Bytes: 180}}}
	ri := describeRule(r)
	if ri.Comment != "hello" || ri.Packets != 3 || ri.Bytes != 180 {
		t.Errorf("describeRule = %+v", ri)
	}
}

// fakeKernel answers nftables batches like a kernel without some
// expression: a batch with a rule using it fails, others succeed. It
// records the chains of every batch.
type fakeKernel struct {
	reject  string     // an expression name, e.g. "socket"; "" rejects every batch
	batches [][]string // chain names added by each batch
	dials   int
}

func (k *fakeKernel) dial(*Netns) (*nftables.Conn, error) {
	k.dials++
	var chains []string
	failed := false
	return nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		if len(req) == 0 {
			return nil, nil
		}
		for _, m := range req {
			switch netlink.HeaderType(m.Header.Type) & 0xff {
			case unix.NFT_MSG_NEWCHAIN:
				chains = append(chains, "chain")
				if bytes.Contains(m.Data, []byte(BypassOutChain)) || bytes.Contains(m.Data, []byte(BypassInChain)) {
					chains[len(chains)-1] = "bypass"
				}
			case unix.NFT_MSG_NEWRULE:
				if k.reject == "" || bytes.Contains(m.Data, []byte(k.reject+"\x00")) {
					failed = true
				}
			}
		}
		if netlink.HeaderType(req[len(req)-1].Header.Type) == netlink.HeaderType(unix.NFNL_MSG_BATCH_END) {
			k.batches = append(k.batches, chains)
			chains = nil
			if failed {
				failed = false
				return nil, errors.New("operation not supported")
			}
		}
		return req, nil
	}))
}

// TestInstallFallsBackWithoutBypass: a kernel that cannot run the socket
// expression gets the capture rules without the bypass, and a warning;
// one that refuses everything gets the error.
func TestInstallFallsBackWithoutBypass(t *testing.T) {
	var logs bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	ns := &Netns{path: "/test/netns"}

	k := &fakeKernel{reject: "socket"}
	got, err := install(t.Context(), ns, Config{}, k.dial)
	if err != nil {
		t.Fatalf("install on a kernel without the socket expression: %v", err)
	}
	if !got.NoConntrackBypass {
		t.Errorf("installed config %+v, want NoConntrackBypass", got)
	}
	if len(k.batches) != 2 || !slices.Contains(k.batches[0], "bypass") || slices.Contains(k.batches[1], "bypass") || len(k.batches[1]) != 2 {
		t.Errorf("batches %v, want the bypass refused then the two nat chains alone", k.batches)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "conntrackBypass=false") {
		t.Errorf("no warning logged: %q", logs.String())
	}

	k = &fakeKernel{}
	_, err = install(t.Context(), ns, Config{}, k.dial)
	if err == nil || !strings.Contains(err.Error(), "operation not supported") {
		t.Errorf("install on a kernel refusing everything: %v, want its error", err)
	}
	k = &fakeKernel{}
	if _, err := install(t.Context(), ns, Config{NoConntrackBypass: true}, k.dial); err == nil || k.dials != 1 {
		t.Errorf("NoConntrackBypass on a refusing kernel: err %v after %d attempts, want an error after 1", err, k.dials)
	}

	k = &fakeKernel{reject: "socket"}
	logs.Reset()
	if _, err := install(t.Context(), ns, Config{NoConntrackBypass: true}, k.dial); err != nil || len(k.batches) != 1 || logs.Len() != 0 {
		t.Errorf("NoConntrackBypass: err %v, batches %v, logs %q; want one batch, no warning", err, k.batches, logs.String())
	}
}

// TestBuildRulesOriginalSource: the option changes no rule (its packets all
// go over lo, where the bypass's rules for the pod talking to itself take
// them), but a mark for ztunnel's sockets that the original source's routing
// rule would match is refused.
func TestBuildRulesOriginalSource(t *testing.T) {
	for _, cfg := range []Config{{}, {NoConntrackBypass: true}} {
		plain, err := buildRules(cfg)
		if err != nil {
			t.Fatal(err)
		}
		cfg.OriginalSource = true
		with, err := buildRules(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if a, b := describeAll(plain), describeAll(with); !reflect.DeepEqual(a, b) {
			t.Errorf("%+v: rules differ with the option:\n%v\nwithout:\n%v", cfg, b, a)
		}
	}
	if _, err := buildRules(Config{OriginalSource: true, Mark: 0x1053a, MarkMask: 0xfffff}); err == nil {
		t.Error("mark 0x1053a with OriginalSource: no error, want one (its sockets would be routed locally)")
	}
	for _, cfg := range []Config{{Mark: 0x1053a, MarkMask: 0xfffff}, {OriginalSource: true, Mark: 0x3a, MarkMask: 0xff}} {
		if _, err := buildRules(cfg); err != nil {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
}

// TestInstallFallsBackWithoutOriginalSource: a namespace refusing the
// routing (or the sysctl) gets the capture, with the bypass, without the
// original source, a warning, and whatever part of the routing was added
// removed; the returned config says so.
func TestInstallFallsBackWithoutOriginalSource(t *testing.T) {
	var logs bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	oldRouting := sourceRouting
	t.Cleanup(func() { sourceRouting = oldRouting })
	var routed, removed int
	var routeErr error
	sourceRouting.install = func(*Netns) error { routed++; return routeErr }
	sourceRouting.remove = func(*Netns) error { removed++; return nil }
	ns := &Netns{path: "/test/netns"}

	k := &fakeKernel{reject: "nothing-rejects-this"}
	got, err := install(t.Context(), ns, Config{OriginalSource: true}, k.dial)
	if err != nil || !got.OriginalSource || got.NoConntrackBypass || len(k.batches) != 1 || routed != 1 || removed != 0 {
		t.Errorf("install: %+v, %v, batches %v, routed %d, removed %d; want everything at once", got, err, k.batches, routed, removed)
	}

	k = &fakeKernel{reject: "nothing-rejects-this"}
	routed, removed = 0, 0
	routeErr = errors.New("no policy routing here")
	got, err = install(t.Context(), ns, Config{OriginalSource: true}, k.dial)
	if err != nil || got.OriginalSource || got.NoConntrackBypass || len(k.batches) != 1 || routed != 1 || removed != 1 {
		t.Errorf("install with routing refused: %+v, %v, batches %v, routed %d, removed %d; want one batch without the original source, the routing removed",
			got, err, k.batches, routed, removed)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "originalSource=false") ||
		!strings.Contains(logs.String(), "no policy routing here") {
		t.Errorf("no warning with the reason logged: %q", logs.String())
	}

	// Without the option nothing is routed or removed.
	k = &fakeKernel{reject: "nothing-rejects-this"}
	routed, removed = 0, 0
	if got, err = install(t.Context(), ns, Config{}, k.dial); err != nil || got.OriginalSource || routed+removed != 0 {
		t.Errorf("install without the option: %+v, %v, routed %d, removed %d", got, err, routed, removed)
	}
}
