package daemon

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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
// not excluded, and that was not removed over the API lately), it looks for a namespace file in Config.DiscoverNetnsDir
// holding one of the workload's addresses, and enrols the pod with that
// path as if the CNI plugin had reported it. Namespaces already read are
// remembered by inode, so a pass opens only new ones.
func (d *Daemon) discover(ctx context.Context) {
	dir := d.cfg.DiscoverNetnsDir
	if dir == "" {
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
	entries, err := os.ReadDir(dir)
	if err != nil {
		d.log.Warn("pod discovery: cannot read the netns folder", "dir", dir, "err", err)
		return
	}
	seen := map[string]bool{}
	for _, e := range entries {
		if ctx.Err() != nil {
			return
		}
		path := filepath.Join(dir, e.Name())
		seen[path] = true
		if reportedNetns[path] || e.IsDir() {
			continue
		}
		info, ok := d.netnsAddrs(ctx, path)
		if !ok {
			continue
		}
		var w *config.Workload
		var ips []netip.Addr
		for _, a := range info.addrs {
			if cand := byIP[a]; cand != nil && (w == nil || w == cand) {
				w = cand
				ips = append(ips, a)
			}
		}
		if w == nil {
			continue
		}
		pod := enroll.Pod{UID: w.Proto.GetUid(), Namespace: w.Namespace, Name: w.PodName, NetnsPath: path, PodIPs: ips}
		d.log.Info("pod discovery: found a pod nobody reported (it started before ztunnel)", "pod", pod.Key(), "netns", path, "ips", fmtAddrs(ips))
		if _, err := d.enroll.Add(ctx, pod); err != nil {
			d.log.Warn("pod discovery: enrolment failed", "pod", pod.Key(), "err", err)
			continue
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
			continue
		}
		for _, a := range w.Addresses {
			delete(byIP, a)
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

// netnsAddrs returns the global unicast addresses inside the namespace file
// at path, from the cache when the file is the same one as before; ok is
// false when path is not a readable namespace.
func (d *Daemon) netnsAddrs(ctx context.Context, path string) (netnsInfo, bool) {
	fi, err := os.Stat(path)
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
	if netnsGone(path) != "" {
		return netnsInfo{}, false
	}
	ns, err := redirect.OpenNetns(path)
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
