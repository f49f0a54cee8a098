package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// Down stops the cluster and removes everything it made on the host: its
// processes (by recorded PID), the pods' processes (by kubepods cgroup),
// containerd shims bound to its socket, mounts, pod network namespaces,
// cgroups, links, nftables tables, CNI files and host folders it created; it
// restores net.ipv4.ip_forward and empties the state folder except logs/.
// It works when nothing is up and after a crash.
func (c *Cluster) Down(ctx context.Context) error {
	if err := requireRoot(); err != nil {
		return err
	}
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()
	t := time.Now()
	if err := c.down(ctx, false); err != nil {
		return err
	}
	c.logf("down in %s", since(t))
	return nil
}

// Down stops the cluster of opts (see Cluster.Down).
func Down(ctx context.Context, opts Options) error {
	c, err := New(opts)
	if err != nil {
		return err
	}
	return c.Down(ctx)
}

// down does Down's work under the lock. Every step runs even when an
// earlier one failed; the errors are joined.
func (c *Cluster) down(_ context.Context, quiet bool) error {
	var errs []error
	step := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	procs := func(names ...string) []procID {
		var ids []procID
		for _, n := range names {
			if id, err := readPidFile(c.pidFile(n)); err == nil {
				ids = append(ids, id)
			}
		}
		return ids
	}
	rec, err := readHostRecord(c.p.Host)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		step("host record", err)
	}
	// the node's agents first, so that nothing restarts the pods
	agents := []string{"kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager"}
	step("stopping kubelet and the controllers", stopProcs(procs(agents...), 3*time.Second))
	// components whose PID file is lost (found by an argument in the state folder)
	step("killing unrecorded agents", killPIDs(componentsByArgs(c.p.State, agents)))
	step("killing pod processes", killPods())
	step("killing containerd shims", killPIDs(shimsOf(c.p.ContainerdSock)))
	core := []string{"containerd", "kube-apiserver", "etcd"}
	step("stopping containerd, kube-apiserver and etcd", stopProcs(procs(core...), 3*time.Second))
	step("killing unrecorded components", killPIDs(componentsByArgs(c.p.State, core)))
	// shims started while containerd stopped
	step("killing containerd shims", killPIDs(shimsOf(c.p.ContainerdSock)))

	roots := []string{c.p.State}
	if rec != nil {
		roots = append(roots, rec.Created...)
	}
	step("unmounting", unmountAll(roots))
	step("removing pod network namespaces", removeCNINetns())
	step("removing kubepods cgroups", removeCgroups())
	step("deleting links", deleteLinks())
	step("deleting nftables tables", deleteNFTables())

	if rec != nil {
		step("releasing "+NetnsDir, releaseNetns(rec))
		step("restoring net.ipv4.ip_forward", restoreIPForward(rec.IPForward))
		step("restoring net.bridge.bridge-nf-call-iptables", restoreSysctl(bridgeNFCallPath, rec.BridgeNFCall))
		for _, f := range rec.Files {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				step("removing "+f, err)
			}
		}
		// deepest first, so that a created parent goes after its children
		created := append([]string(nil), rec.Created...)
		sort.Slice(created, func(i, j int) bool { return len(created[i]) > len(created[j]) })
		for _, d := range created {
			step("removing "+d, os.RemoveAll(d))
		}
	} else {
		// no record: remove only the network file that is surely ours
		if err := os.Remove(filepath.Join(CNIConfDir, CNIConfFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			step("removing the CNI config", err)
		}
	}
	if len(errs) == 0 {
		step("emptying "+c.p.State, c.emptyState())
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if !quiet {
		c.logf("stopped; nothing left of the cluster outside %s", c.p.Logs)
	}
	return nil
}

// emptyState removes everything in the state folder but the logs and the lock.
func (c *Cluster) emptyState() error {
	ents, err := os.ReadDir(c.p.State)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		p := filepath.Join(c.p.State, e.Name())
		if p == c.p.Logs || p == c.p.Lock {
			continue
		}
		errs = append(errs, os.RemoveAll(p))
	}
	return errors.Join(errs...)
}
