package netlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/integration/internal/tier"
)

// Prefix starts the name of every namespace a lab creates.
const Prefix = "ambitlab-"

// netnsDir is where named network namespaces are bind-mounted (as iproute2 does).
const netnsDir = "/run/netns"

// Range is the address range of every lab.
var Range = netip.MustParsePrefix("10.250.0.0/16")

// Range6 is the IPv6 range of a dual-stack lab (DualStack): unique-local
// addresses that exist inside the lab's namespaces only. Node i has
// fdab:250:ff00::<10+i> on the fabric and its pods fdab:250:ff00:<i+1>::/64,
// the node holding ::1 and its pods ::2 on, as in IPv4.
var Range6 = netip.MustParsePrefix("fdab:250:ff00::/48")

// Option changes how a lab is built.
type Option func(*Lab)

// DualStack gives every node and pod an IPv6 address of Range6 next to its
// IPv4 one, with routes between the nodes as for IPv4.
func DualStack() Option { return func(l *Lab) { l.dualStack = true } }

// maxNodes and maxPods keep addresses inside Range and under the 15-byte
// interface-name limit.
const (
	maxNodes = 200
	maxPods  = 250
)

// Lab is one topology of nodes and pods. Its methods are safe for concurrent use.
type Lab struct {
	prefix    string // "ambitlab-<pid>-"
	dualStack bool

	mu     sync.Mutex
	fabric *namespace
	nodes  []*Node
	closed bool
}

// Node is a namespace standing for a Kubernetes node.
type Node struct {
	Name    string
	IP      netip.Addr   // address on the fabric
	PodCIDR netip.Prefix // range of its pods; the node holds the first address
	// IP6 and PodCIDR6 are the IPv6 counterparts in a dual-stack lab, else
	// zero.
	IP6      netip.Addr
	PodCIDR6 netip.Prefix
	lab      *Lab
	index    int
	ns       *namespace
	pods     []*Pod
}

// Pod is a namespace standing for a pod on a node.
type Pod struct {
	Name string
	IP   netip.Addr
	IP6  netip.Addr // in a dual-stack lab, else zero
	Node *Node
	ns   *namespace
}

// namespace is a named network namespace and an open handle on it.
type namespace struct {
	name   string
	handle netns.NsHandle
}

// Path is where the namespace is mounted, as a CNI plugin would hand it over.
func (n *namespace) path() string { return filepath.Join(netnsDir, n.name) }

// New sweeps leftovers of crashed runs, creates an empty lab and removes it
// when the test ends. Without root it skips the test, or fails it under CI.
func New(t testing.TB, opts ...Option) *Lab {
	t.Helper()
	tier.RequireRoot(t)
	if err := Sweep(); err != nil {
		t.Fatalf("sweep leftover namespaces: %v", err)
	}
	l, err := NewLab(opts...)
	if err != nil {
		t.Fatalf("create lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("remove lab: %v", err)
		}
	})
	return l
}

// NewLab creates an empty lab: the fabric namespace and its bridge. The caller
// must Close it.
func NewLab(opts ...Option) (*Lab, error) {
	l := &Lab{prefix: fmt.Sprintf("%s%d-", Prefix, os.Getpid())}
	for _, o := range opts {
		o(l)
	}
	fab, err := l.newNamespace("fabric")
	if err != nil {
		return nil, err
	}
	l.fabric = fab
	err = withHandle(fab, func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "fabric"}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge: %w", err)
		}
		return h.LinkSetUp(br)
	})
	if err != nil {
		_ = l.Close()
		return nil, err
	}
	return l, nil
}

// AddNode adds a node namespace on the fabric, with routes to and from every
// existing node.
func (l *Lab) AddNode(name string) (*Node, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("lab is closed")
	}
	i := len(l.nodes)
	if i >= maxNodes {
		return nil, fmt.Errorf("a lab holds at most %d nodes", maxNodes)
	}
	ns, err := l.newNamespace(name)
	if err != nil {
		return nil, err
	}
	n := &Node{
		Name:    name,
		IP:      netip.AddrFrom4([4]byte{10, 250, 0, byte(10 + i)}),
		PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(i + 1), 0}), 24),
		lab:     l,
		index:   i,
		ns:      ns,
	}
	if l.dualStack {
		n.IP6 = v6(0, 10+i)
		n.PodCIDR6 = netip.PrefixFrom(v6(i+1, 0), 64)
	}
	l.nodes = append(l.nodes, n) // Close removes it even if set-up fails below
	fabricPort := fmt.Sprintf("n%d", i)
	if err := addVeth(ns, "eth0", l.fabric, fabricPort); err != nil {
		return nil, err
	}
	err = withHandle(l.fabric, func(h *netlink.Handle) error {
		return attach(h, fabricPort, "fabric")
	})
	if err != nil {
		return nil, err
	}
	err = n.do(func() error {
		if l.dualStack {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: enable forwarding: %w", name, err)
	}
	err = withHandle(ns, func(h *netlink.Handle) error {
		if err := upWithAddr(h, "eth0", netip.PrefixFrom(n.IP, 24)); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cbr0"}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("add cbr0: %w", err)
		}
		if err := upWithAddr(h, "cbr0", netip.PrefixFrom(n.PodCIDR.Addr().Next(), 24)); err != nil {
			return err
		}
		if !l.dualStack {
			return nil
		}
		if err := upWithAddr(h, "eth0", netip.PrefixFrom(n.IP6, 64)); err != nil {
			return err
		}
		return upWithAddr(h, "cbr0", netip.PrefixFrom(n.PodCIDR6.Addr().Next(), 64))
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	for _, other := range l.nodes[:i] {
		if err := other.routeTo(n); err != nil {
			return nil, err
		}
		if err := n.routeTo(other); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// routeTo sends traffic for other's pods through other's node address.
func (n *Node) routeTo(other *Node) error {
	return withHandle(n.ns, func(h *netlink.Handle) error {
		routes := [][2]string{{other.PodCIDR.String(), other.IP.String()}}
		if other.PodCIDR6.IsValid() {
			routes = append(routes, [2]string{other.PodCIDR6.String(), other.IP6.String()})
		}
		for _, r := range routes {
			_, dst, _ := net.ParseCIDR(r[0])
			if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP(r[1])}); err != nil {
				return fmt.Errorf("node %s: route to %s via %s: %w", n.Name, r[0], r[1], err)
			}
		}
		return nil
	})
}

// AddPod adds a pod namespace attached to the node's pod bridge.
func (n *Node) AddPod(name string) (*Pod, error) {
	l := n.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("lab is closed")
	}
	j := len(n.pods)
	if j >= maxPods {
		return nil, fmt.Errorf("a node holds at most %d pods", maxPods)
	}
	ns, err := l.newNamespace(n.Name + "-" + name)
	if err != nil {
		return nil, err
	}
	ip := n.PodCIDR.Addr().As4()
	ip[3] = byte(j + 2)
	p := &Pod{Name: name, IP: netip.AddrFrom4(ip), Node: n, ns: ns}
	if n.PodCIDR6.IsValid() {
		p.IP6 = v6(n.index+1, j+2)
	}
	n.pods = append(n.pods, p)
	nodePort := fmt.Sprintf("p%d", j)
	if err := addVeth(ns, "eth0", n.ns, nodePort); err != nil {
		return nil, err
	}
	if err := withHandle(n.ns, func(h *netlink.Handle) error { return attach(h, nodePort, "cbr0") }); err != nil {
		return nil, err
	}
	err = withHandle(ns, func(h *netlink.Handle) error {
		if err := upWithAddr(h, "eth0", netip.PrefixFrom(p.IP, 24)); err != nil {
			return err
		}
		if err := h.RouteAdd(&netlink.Route{Gw: n.PodCIDR.Addr().Next().AsSlice()}); err != nil {
			return err
		}
		if !p.IP6.IsValid() {
			return nil
		}
		if err := upWithAddr(h, "eth0", netip.PrefixFrom(p.IP6, 64)); err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{Gw: n.PodCIDR6.Addr().Next().AsSlice()})
	})
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", name, err)
	}
	return p, nil
}

// NetnsPath is the pod's network namespace file, as a CNI runtime passes it.
func (p *Pod) NetnsPath() string { return p.ns.path() }

// NetnsPath is the node's network namespace file.
func (n *Node) NetnsPath() string { return n.ns.path() }

// Do runs fn on a thread inside the pod's network namespace. Sockets fn
// creates stay in that namespace and may be used from any goroutine after it
// returns; goroutines fn starts do not run in the namespace.
func (p *Pod) Do(fn func() error) error { return p.ns.do(fn) }

// Do runs fn inside the node's network namespace; see Pod.Do.
func (n *Node) Do(fn func() error) error { return n.ns.do(fn) }

func (n *Node) do(fn func() error) error { return n.ns.do(fn) }

// Start starts cmd inside the pod's network namespace.
func (p *Pod) Start(cmd *exec.Cmd) error { return p.ns.do(cmd.Start) }

// Start starts cmd inside the node's network namespace.
func (n *Node) Start(cmd *exec.Cmd) error { return n.ns.do(cmd.Start) }

// Nodes returns the lab's nodes in the order they were added.
func (l *Lab) Nodes() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Node(nil), l.nodes...)
}

// Close deletes every namespace of the lab, and with them all their links.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for _, n := range l.nodes {
		for _, p := range n.pods {
			errs = append(errs, p.ns.remove())
		}
		errs = append(errs, n.ns.remove())
	}
	if l.fabric != nil {
		errs = append(errs, l.fabric.remove())
	}
	return errors.Join(errs...)
}

// newNamespace creates and mounts a named namespace with loopback up.
func (l *Lab) newNamespace(name string) (*namespace, error) {
	full := l.prefix + name
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return nil, err
	}
	var h netns.NsHandle
	err := onLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		// NewNamed moves this thread into the new namespace; go back after.
		h, err = netns.NewNamed(full)
		if err != nil {
			return fmt.Errorf("create netns %s: %w", full, err)
		}
		return netns.Set(orig)
	})
	if err != nil {
		return nil, err
	}
	ns := &namespace{name: full, handle: h}
	err = withHandle(ns, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
	if err != nil {
		_ = ns.remove()
		return nil, fmt.Errorf("netns %s: loopback up: %w", full, err)
	}
	return ns, nil
}

func (n *namespace) do(fn func() error) error {
	return onLockedThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := netns.Set(n.handle); err != nil {
			return fmt.Errorf("enter netns %s: %w", n.name, err)
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			// The thread is stuck in the wrong namespace: let it die with the
			// goroutine rather than serve others.
			return errors.Join(fnErr, errThreadLost{err})
		}
		return fnErr
	})
}

func (n *namespace) remove() error {
	n.handle.Close()
	if err := netns.DeleteNamed(n.name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", n.name, err)
	}
	return nil
}

// errThreadLost marks a thread that could not return to its namespace.
type errThreadLost struct{ err error }

func (e errThreadLost) Error() string { return "restore thread network namespace: " + e.err.Error() }

// onLockedThread runs fn on a locked OS thread. If fn could not restore the
// thread's namespace, the thread is not unlocked, so the runtime ends it.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		var lost errThreadLost
		if !errors.As(err, &lost) {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// withHandle runs fn with a netlink handle bound to the namespace.
func withHandle(ns *namespace, fn func(*netlink.Handle) error) error {
	h, err := netlink.NewHandleAt(ns.handle)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ns.name, err)
	}
	defer h.Close()
	return fn(h)
}

// addVeth creates a veth pair with one end (name) in a and the other (peer) in b.
func addVeth(a *namespace, name string, b *namespace, peer string) error {
	return withHandle(a, func(h *netlink.Handle) error {
		v := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: name},
			PeerName:      peer,
			PeerNamespace: netlink.NsFd(int(b.handle)),
		}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("veth %s/%s - %s/%s: %w", a.name, name, b.name, peer, err)
		}
		return nil
	})
}

// attach enslaves link to bridge and sets it up.
func attach(h *netlink.Handle, link, bridge string) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return err
	}
	br, err := h.LinkByName(bridge)
	if err != nil {
		return err
	}
	if err := h.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("attach %s to %s: %w", link, bridge, err)
	}
	return h.LinkSetUp(l)
}

// v6 is the address host in subnet of Range6: subnet 0 is the fabric,
// subnet i+1 node i's pods.
func v6(subnet, host int) netip.Addr {
	a := Range6.Addr().As16()
	a[6], a[7] = byte(subnet>>8), byte(subnet)
	a[14], a[15] = byte(host>>8), byte(host)
	return netip.AddrFrom16(a)
}

// upWithAddr gives link an address and sets it up. IPv6 addresses skip
// duplicate address detection, so that they are usable at once.
func upWithAddr(h *netlink.Handle, link string, addr netip.Prefix) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(addr.String())
	if err != nil {
		return err
	}
	if addr.Addr().Is6() {
		a.Flags |= unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr, link, err)
	}
	return h.LinkSetUp(l)
}

// Sweep deletes namespaces left by labs whose process no longer runs.
func Sweep() error {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		pid, ok := ownerPID(e.Name())
		if !ok || processAlive(pid) {
			continue
		}
		if err := netns.DeleteNamed(e.Name()); err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", e.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// ownerPID parses the PID out of "ambitlab-<pid>-<name>".
func ownerPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return 0, false
	}
	pidStr, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidStr)
	return pid, err == nil
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
