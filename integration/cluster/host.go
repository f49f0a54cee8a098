package cluster

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// hostRecord is what Up found on the host before it changed anything, kept
// in <state>/host.json so that Down can undo exactly that, also after a crash.
type hostRecord struct {
	// IPForward is the value net.ipv4.ip_forward had.
	IPForward string `json:"ipForward"`
	// BridgeNFCall is the value net.bridge.bridge-nf-call-iptables had
	// ("" when br_netfilter is not loaded).
	BridgeNFCall string `json:"bridgeNFCall,omitempty"`
	// Created are host paths outside the state folder that did not exist
	// and that Up created (removed whole by Down).
	Created []string `json:"created"`
	// Files are files Up wrote into host folders that existed already
	// (removed one by one by Down).
	Files []string `json:"files"`
	// NetnsDirCreated: Up created NetnsDir (Down removes it when empty).
	NetnsDirCreated bool `json:"netnsDirCreated,omitempty"`
	// NetnsMounted: Up bind-mounted NetnsDir onto itself as a shared mount
	// (Down unmounts it when no namespace but the pods' is mounted inside).
	NetnsMounted bool `json:"netnsMounted,omitempty"`
}

// hostDirs are the folders outside the state folder that the node uses:
// CNI configuration and plugins, the CNI result cache, kubelet's fixed
// device-plugin and pod-resources sockets, pod log links, containerd's shim
// sockets and Ambit's own node folder (a hostPath of the ztunnel DaemonSet).
var hostDirs = []string{CNIConfDir, CNIBinDir, "/var/lib/cni", "/var/lib/kubelet",
	"/var/log/pods", "/var/log/containers", "/run/containerd", "/run/ambit"}

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// bridgeNFCallPath makes bridged IPv4 traffic pass netfilter: a pod reaching
// a Service whose endpoint is on the same bridge needs it, or the reply
// bypasses the un-DNAT and the connection fails.
const bridgeNFCallPath = "/proc/sys/net/bridge/bridge-nf-call-iptables"

func readHostRecord(path string) (*hostRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r hostRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

func (r *hostRecord) save(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'), 0o644)
}

// topMissing returns the outermost ancestor of p (or p) that does not exist,
// or "" when p exists.
func topMissing(p string) string {
	if exists(p) {
		return ""
	}
	top := p
	for d := filepath.Dir(p); d != "/" && !exists(d); d = filepath.Dir(d) {
		top = d
	}
	return top
}

// recordHost notes, before Up changes anything, the ip_forward value and
// which host folders are missing.
func recordHost() (*hostRecord, error) {
	fwd, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return nil, err
	}
	r := &hostRecord{IPForward: strings.TrimSpace(string(fwd))}
	if b, err := os.ReadFile(bridgeNFCallPath); err == nil {
		r.BridgeNFCall = strings.TrimSpace(string(b))
	}
	seen := map[string]bool{}
	for _, d := range hostDirs {
		if top := topMissing(d); top != "" && !seen[top] {
			seen[top] = true
			r.Created = append(r.Created, top)
		}
	}
	return r, nil
}

// installCNI copies the reference plugins into CNIBinDir and writes the
// network's conflist into CNIConfDir, recording the files it wrote into
// folders that existed before.
func installCNI(r *hostRecord, pluginDir, dataDir, recordPath string) error {
	inCreated := func(p string) bool {
		for _, c := range r.Created {
			if p == c || strings.HasPrefix(p, c+"/") {
				return true
			}
		}
		return false
	}
	note := func(p string) error {
		if inCreated(p) {
			return nil
		}
		for _, f := range r.Files {
			if f == p {
				return nil
			}
		}
		r.Files = append(r.Files, p)
		return r.save(recordPath)
	}
	for _, d := range []string{CNIBinDir, CNIConfDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, name := range CNIPlugins {
		dst := filepath.Join(CNIBinDir, name)
		if err := note(dst); err != nil {
			return err
		}
		if err := copyFile(filepath.Join(pluginDir, name), dst, 0o755); err != nil {
			return err
		}
	}
	conf, err := cniConflist(dataDir)
	if err != nil {
		return err
	}
	dst := filepath.Join(CNIConfDir, CNIConfFile)
	if err := note(dst); err != nil {
		return err
	}
	// Ambit's CNI installer chains its plugin into this file: write it only
	// when it is missing, so that a repeated Up does not undo that.
	if exists(dst) {
		return nil
	}
	return writeFileAtomic(dst, conf, 0o644)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer func() { _ = in.Close() }()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// setupNodeLink creates the link carrying the node address: a dummy link,
// or a bridge without ports where the kernel has no dummy driver.
func setupNodeLink() error {
	link, err := netlink.LinkByName(NodeLink)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return err
		}
		la := netlink.NewLinkAttrs()
		la.Name = NodeLink
		err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: la})
		if errors.Is(err, unix.EOPNOTSUPP) {
			// a kernel without the dummy driver: a bridge without ports
			// carries a local address just as well.
			err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la})
		}
		if err != nil {
			return fmt.Errorf("add link %s: %w", NodeLink, err)
		}
		if link, err = netlink.LinkByName(NodeLink); err != nil {
			return err
		}
	}
	addr, err := netlink.ParseAddr(NodeIP + "/32")
	if err != nil {
		return err
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", NodeIP, NodeLink, err)
	}
	return netlink.LinkSetUp(link)
}

// deleteLinks removes the bridge, every link enslaved to it (pod veths left
// by a crash) and the node's dummy link.
func deleteLinks() error {
	var errs []error
	if br, err := netlink.LinkByName(BridgeName); err == nil {
		links, err := netlink.LinkList()
		if err == nil {
			for _, l := range links {
				if l.Attrs().MasterIndex == br.Attrs().Index {
					if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
						errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
					}
				}
			}
		}
		if err := netlink.LinkDel(br); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", BridgeName, err))
		}
	}
	if l, err := netlink.LinkByName(NodeLink); err == nil {
		if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", NodeLink, err))
		}
	}
	return errors.Join(errs...)
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// nftTables are the nftables tables kube-proxy and the portmap plugin make.
var nftTables = [][2]string{{"ip", "kube-proxy"}, {"ip6", "kube-proxy"}, {"ip", "cni_hostport"}, {"ip6", "cni_hostport"}}

// deleteNFTables removes the tables of nftTables that exist.
func deleteNFTables() error {
	nft, err := exec.LookPath("nft")
	if err != nil {
		return nil // without nft, kube-proxy could not have made any
	}
	out, err := exec.Command(nft, "list", "tables").Output()
	if err != nil {
		return fmt.Errorf("nft list tables: %w", err)
	}
	have := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "table" {
			have[f[1]+" "+f[2]] = true
		}
	}
	var errs []error
	for _, t := range nftTables {
		if !have[t[0]+" "+t[1]] {
			continue
		}
		if out, err := exec.Command(nft, "delete", "table", t[0], t[1]).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("nft delete table %s %s: %v: %s", t[0], t[1], err, out))
		}
	}
	return errors.Join(errs...)
}

// mountPoints returns the mount points listed in a mountinfo file (octal
// escapes decoded) for which keep returns true, deepest first.
func mountPoints(mountinfo io.Reader, keep func(string) bool) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(mountinfo)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if keep(mp) {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool {
		return strings.Count(out[i], "/") > strings.Count(out[j], "/")
	})
	return out, nil
}

// unescapeMount decodes the \NNN octal escapes of /proc/self/mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// underAny reports whether p is one of roots or inside one of them.
func underAny(p string, roots []string) bool {
	for _, r := range roots {
		if p == r || strings.HasPrefix(p, strings.TrimSuffix(r, "/")+"/") {
			return true
		}
	}
	return false
}

// isCNINetns reports whether p is a network namespace containerd made for a
// pod sandbox (/run/netns/cni-<uuid>).
func isCNINetns(p string) bool {
	return strings.HasPrefix(p, NetnsDir+"/cni-") || strings.HasPrefix(p, "/var/run/netns/cni-")
}

// unmountAll lazily unmounts every mount point inside roots and every pod
// network namespace, deepest first, until none is left.
func unmountAll(roots []string) error {
	var last []string
	for round := 0; round < 10; round++ {
		f, err := os.Open("/proc/self/mountinfo")
		if err != nil {
			return err
		}
		mps, err := mountPoints(f, func(p string) bool { return underAny(p, roots) || isCNINetns(p) })
		_ = f.Close()
		if err != nil {
			return err
		}
		if len(mps) == 0 {
			return nil
		}
		last = mps
		for _, mp := range mps {
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("unmount %s: %w", mp, err)
			}
		}
	}
	return fmt.Errorf("mounts left after 10 rounds of unmounting: %s", shortList(last))
}

// removeCNINetns removes the files of pod network namespaces (unmounted
// before by unmountAll).
func removeCNINetns() error {
	ents, err := os.ReadDir(NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		p := filepath.Join(NetnsDir, e.Name())
		if isCNINetns(p) {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// cgroupRoots are the kubepods cgroups of every hierarchy: under each
// cgroup v1 controller, or the unified cgroup v2 tree.
func cgroupRoots() []string {
	var out []string
	for _, pattern := range []string{"/sys/fs/cgroup/*/kubepods", "/sys/fs/cgroup/kubepods"} {
		m, _ := filepath.Glob(pattern)
		out = append(out, m...)
	}
	return out
}

// cgroupDirs returns every cgroup folder below (and including) the roots,
// deepest first.
func cgroupDirs(roots []string) []string {
	var dirs []string
	for _, r := range roots {
		_ = filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	sort.SliceStable(dirs, func(i, j int) bool {
		return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/")
	})
	return dirs
}

// cgroupPIDs lists the processes in the given cgroup folders.
func cgroupPIDs(dirs []string) []int {
	seen := map[int]bool{}
	var out []int
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 && !seen[pid] {
				seen[pid] = true
				out = append(out, pid)
			}
		}
	}
	sort.Ints(out)
	return out
}

// killPods kills every process in the kubepods cgroups.
func killPods() error {
	for round := 0; round < 20; round++ {
		pids := cgroupPIDs(cgroupDirs(cgroupRoots()))
		if len(pids) == 0 {
			return nil
		}
		if err := killPIDs(pids); err != nil {
			return err
		}
	}
	return errors.New("processes keep appearing in the kubepods cgroups")
}

// removeCgroups removes the kubepods cgroups, deepest first.
func removeCgroups() error {
	var errs []error
	for _, d := range cgroupDirs(cgroupRoots()) {
		if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// restoreIPForward writes back the recorded net.ipv4.ip_forward.
func restoreIPForward(v string) error { return restoreSysctl(ipForwardPath, v) }

// restoreSysctl writes v ("0" or "1"; anything else is left alone) to path
// unless it holds it already.
func restoreSysctl(path, v string) error {
	if v != "0" && v != "1" {
		return nil
	}
	cur, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(cur)) == v {
		return nil
	}
	return os.WriteFile(path, []byte(v+"\n"), 0o644)
}

// nodeAddrUsable reports whether the node address is on the node link.
func nodeAddrUsable() bool {
	l, err := netlink.LinkByName(NodeLink)
	if err != nil {
		return false
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.IP.Equal(net.ParseIP(NodeIP)) {
			return true
		}
	}
	return false
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	point  string
	shared bool
}

func readMounts() ([]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return parseMounts(string(b)), nil
}

func parseMounts(info string) []mountEntry {
	var out []mountEntry
	for _, line := range strings.Split(info, "\n") {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		e := mountEntry{point: unescapeMount(f[4])}
		// optional fields run from the 7th to the "-" separator
		for _, o := range f[6:] {
			if o == "-" {
				break
			}
			if strings.HasPrefix(o, "shared:") {
				e.shared = true
			}
		}
		out = append(out, e)
	}
	return out
}

// ensureSharedNetns makes NetnsDir a shared mount, as `ip netns add` does,
// so that containers mounting it with HostToContainer propagation (Ambit's
// ztunnel DaemonSet) see the pod namespaces created after they started.
// It records what it changed in r and saves r to recordPath first.
func ensureSharedNetns(r *hostRecord, recordPath string) error {
	if !exists(NetnsDir) {
		r.NetnsDirCreated = true
		if err := r.save(recordPath); err != nil {
			return err
		}
		if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
			return err
		}
	}
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	mounted := false
	for _, m := range mounts {
		if m.point == NetnsDir {
			mounted = true
			if m.shared {
				return nil
			}
		}
	}
	if !mounted {
		r.NetnsMounted = true
		if err := r.save(recordPath); err != nil {
			return err
		}
		if err := unix.Mount(NetnsDir, NetnsDir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting %s onto itself: %w", NetnsDir, err)
		}
	}
	if err := unix.Mount("", NetnsDir, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("making %s a shared mount: %w", NetnsDir, err)
	}
	return nil
}

// releaseNetns undoes ensureSharedNetns once nothing else is mounted in
// NetnsDir (namespaces of other users keep it as it is).
func releaseNetns(r *hostRecord) error {
	if r.NetnsMounted {
		mounts, err := readMounts()
		if err != nil {
			return err
		}
		for _, m := range mounts {
			if strings.HasPrefix(m.point, NetnsDir+"/") {
				return nil // someone else's namespace: leave the mount
			}
		}
		for _, m := range mounts {
			if m.point == NetnsDir {
				if err := unix.Unmount(NetnsDir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
					return fmt.Errorf("unmount %s: %w", NetnsDir, err)
				}
			}
		}
	}
	if r.NetnsDirCreated {
		if err := unix.Rmdir(NetnsDir); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("rmdir %s: %w", NetnsDir, err)
		}
	}
	return nil
}
