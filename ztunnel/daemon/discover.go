package daemon

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// discoverTimeout bounds one discovery pass.
const discoverTimeout = 30 * time.Second

// removedMemory is how long the UID of a removed pod is kept from discovery:
// between a CNI DEL and the removal of the sandbox's namespace file, and
// until the controller drops the pod's Workload, discovery would otherwise
// find the pod again.
const removedMemory = 10 * time.Minute

// forget keeps a removed pod's UID from discovery for removedMemory.
func (d *Daemon) forget(uid string) {
	d.discoverMu.Lock()
	defer d.discoverMu.Unlock()
	now := time.Now()
	for u, t := range d.removed {
		if now.Sub(t) > removedMemory {
			delete(d.removed, u)
		}
	}
	d.removed[uid] = now
}

func (d *Daemon) recentlyRemoved(uid string) bool {
	d.discoverMu.Lock()
	defer d.discoverMu.Unlock()
	t, ok := d.removed[uid]
	return ok && time.Since(t) <= removedMemory
}

// netnsInfo is what discovery learned of one namespace file.
type netnsInfo struct {
	dev, ino uint64
	addrs    []netip.Addr
}

// discover reports pods that run on this node but were never reported,
// typically because they started before Ambit was installed: for every
// Workload of this node whose UID nobody reported (and whose namespace is
// not excluded, and that was not removed over the API lately), it looks for
// a namespace file in Config.DiscoverNetnsDir holding one of the workload's
// addresses, then, with the host's /proc mounted (Enroll.HostProc), for a
// namespace of the host's processes that has no file (/proc/<pid>/ns/net,
// as runtimes such as cri-dockerd name them), and enrols the pod with that
// path as if the CNI plugin had reported it. Namespaces already read are
// remembered by inode, so a pass opens only new ones.
func (d *Daemon) discover(ctx context.Context) {
	dir := d.cfg.DiscoverNetnsDir
	if dir == "" && d.cfg.Enroll.HostProc == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, discoverTimeout)
	defer cancel()
	reportedUID, reportedNetns := map[string]bool{}, map[string]bool{}
	for _, p := range d.enroll.Pods() {
		reportedUID[p.UID] = true
		reportedNetns[p.NetnsPath] = true
	}
	byIP := map[netip.Addr]*config.Workload{}
	for _, w := range d.store.Snapshot().Workloads {
		p := w.Proto
		if p.GetNode() != d.cfg.NodeName || p.GetUid() == "" || reportedUID[p.GetUid()] || d.recentlyRemoved(p.GetUid()) ||
			slices.Contains(d.cfg.DiscoverExcludeNamespaces, w.Namespace) {
			continue
		}
		for _, a := range w.Addresses {
			byIP[a] = w
		}
	}
	if len(byIP) == 0 {
		return
	}
	seen := map[string]bool{}
	seenNetns := map[[2]uint64]bool{}
	// try enrols the pod, if any, whose namespace the runtime would name
	// path (opened at at).
	try := func(path, at string) {
		seen[path] = true
		if reportedNetns[path] {
			return
		}
		info, ok := d.netnsAddrs(ctx, path, at)
		if !ok {
			return
		}
		seenNetns[[2]uint64{info.dev, info.ino}] = true
		var w *config.Workload
		var ips []netip.Addr
		for _, a := range info.addrs {
			if cand := byIP[a]; cand != nil && (w == nil || w == cand) {
				w = cand
				ips = append(ips, a)
			}
		}
		if w == nil {
			return
		}
		pod := enroll.Pod{UID: w.Proto.GetUid(), Namespace: w.Namespace, Name: w.PodName, NetnsPath: path, PodIPs: ips}
		d.log.Info("pod discovery: found a pod nobody reported (it started before ztunnel)", "pod", pod.Key(), "netns", path, "ips", fmtAddrs(ips))
		if _, err := d.enroll.Add(ctx, pod); err != nil {
			d.log.Warn("pod discovery: enrolment failed", "pod", pod.Key(), "err", err)
			return
		}
		// A CNI DEL may have removed the pod between this pass's snapshot
		// and the Add: Remove forgets the UID under the same per-pod lock
		// that Add takes, so once Add returns a racing removal is visible.
		// Undo the enrolment then.
		if d.recentlyRemoved(pod.UID) {
			d.log.Info("pod discovery: the pod was removed meanwhile; undoing its enrolment", "pod", pod.Key())
			if _, err := d.enroll.Remove(ctx, pod.UID, ""); err != nil {
				d.log.Warn("pod discovery: undoing the enrolment failed", "pod", pod.Key(), "err", err)
			}
			return
		}
		for _, a := range w.Addresses {
			delete(byIP, a)
		}
	}
	if dir != "" {
		entries, err := os.ReadDir(dir)
		if err != nil {
			d.log.Warn("pod discovery: cannot read the netns folder", "dir", dir, "err", err)
		}
		for _, e := range entries {
			if ctx.Err() != nil {
				return
			}
			if !e.IsDir() {
				path := filepath.Join(dir, e.Name())
				try(path, path)
			}
		}
	}
	// Namespaces that have no file (runtimes such as cri-dockerd name a
	// process's namespace instead): one process of each, the oldest,
	// through the host's /proc.
	if hostProc := d.cfg.Enroll.HostProc; hostProc != "" && len(byIP) > 0 {
		for path := range reportedNetns {
			var st syscall.Stat_t
			if syscall.Stat(d.netnsAt(path), &st) == nil {
				seenNetns[[2]uint64{uint64(st.Dev), st.Ino}] = true
			}
		}
		for _, pid := range procNetnsOwners(hostProc, seenNetns) {
			if ctx.Err() != nil || len(byIP) == 0 {
				break
			}
			path := "/proc/" + strconv.Itoa(pid) + "/ns/net"
			try(path, d.netnsAt(path))
		}
	}
	d.discoverMu.Lock()
	for p := range d.discovered {
		if !seen[p] {
			delete(d.discovered, p)
		}
	}
	d.discoverMu.Unlock()
}

// netnsAddrs returns the global unicast addresses inside the namespace that
// the runtime would name path, opened at at, from the cache when it is the
// same namespace as before; ok is false when it is not a readable namespace.
func (d *Daemon) netnsAddrs(ctx context.Context, path, at string) (netnsInfo, bool) {
	fi, err := os.Stat(at)
	if err != nil {
		return netnsInfo{}, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || fi.IsDir() {
		return netnsInfo{}, false
	}
	d.discoverMu.Lock()
	cached, hit := d.discovered[path]
	d.discoverMu.Unlock()
	if hit && cached.dev == uint64(st.Dev) && cached.ino == st.Ino {
		return cached, true
	}
	if netnsGone(at) != "" {
		return netnsInfo{}, false
	}
	ns, err := redirect.OpenNetns(at)
	if err != nil {
		return netnsInfo{}, false
	}
	defer ns.Close()
	info := netnsInfo{dev: uint64(st.Dev), ino: st.Ino}
	err = ns.Do(ctx, func() error {
		as, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range as {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if ip = ip.Unmap(); ok && ip.IsGlobalUnicast() {
				info.addrs = append(info.addrs, ip)
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		d.log.Debug("pod discovery: cannot read a namespace's addresses", "netns", path, "err", err)
		return netnsInfo{}, false
	}
	d.discoverMu.Lock()
	d.discovered[path] = info
	d.discoverMu.Unlock()
	return info, true
}

// procNetnsOwners returns, for each network namespace of the host's
// processes (under hostProc) other than the host's own and those in skip,
// the lowest PID in it: the sandbox's first process, which lives as long as
// the pod.
func procNetnsOwners(hostProc string, skip map[[2]uint64]bool) []int {
	entries, err := os.ReadDir(hostProc)
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	netnsOf := func(dir string) ([2]uint64, bool) {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, "ns", "net"), &st); err != nil {
			return [2]uint64{}, false
		}
		return [2]uint64{uint64(st.Dev), st.Ino}, true
	}
	seen := maps.Clone(skip)
	if seen == nil {
		seen = map[[2]uint64]bool{}
	}
	// The host's namespace (PID 1's) and ztunnel's own are never a pod's.
	for _, dir := range []string{filepath.Join(hostProc, "1"), "/proc/self"} {
		if k, ok := netnsOf(dir); ok {
			seen[k] = true
		}
	}
	var out []int
	for _, pid := range pids {
		k, ok := netnsOf(filepath.Join(hostProc, strconv.Itoa(pid)))
		if !ok || seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, pid)
	}
	return out
}
