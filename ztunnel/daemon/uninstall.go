package daemon

import (
	"context"
	"errors"
	"io/fs"
	"os"

	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

// uninstalling asks Config.Shutdown whether this stop is an uninstall and
// logs the decision.
func (d *Daemon) uninstalling() bool {
	if d.cfg.Shutdown == nil {
		d.log.Info("stopping: keeping the capture rules, state files and CNI chain (no uninstall check configured)")
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownDecisionTimeout)
	defer cancel()
	uninstall, reason := d.cfg.Shutdown.Uninstalling(ctx)
	if uninstall {
		d.log.Info("stopping: uninstall, releasing every pod and removing the CNI plugin", "reason", reason)
	} else {
		d.log.Info("stopping: restart, keeping the capture rules, state files and CNI chain", "reason", reason)
	}
	return uninstall
}

// uninstallCNI removes the CNI plugin from the node's chain and its binary,
// so that new pods start without Ambit. Run calls it first at uninstall,
// once the installer (which would chain it again) has stopped.
func (d *Daemon) uninstallCNI() {
	if d.cfg.CNI != nil {
		if err := d.cfg.CNI.Uninstall(); err != nil {
			d.log.Error("uninstall: removing the CNI plugin failed", "err", err)
		}
	}
}

// uninstall undoes the rest of what ztunnel did to the node, once its
// servers have stopped and the CNI chain is gone (uninstallCNI): every
// pod's capture (so that applications talk directly again), then the state
// files.
func (d *Daemon) uninstall() {
	ctx, cancel := context.WithTimeout(context.Background(), uninstallTimeout)
	defer cancel()
	d.releaseAll(ctx)
	stateFile := d.cfg.Enroll.StateFile
	if stateFile == "" {
		stateFile = enroll.DefaultStateFile
	}
	for _, f := range []string{stateFile, d.cfg.XDSStateFile} {
		if f == "" {
			continue
		}
		if err := os.Remove(f); err == nil {
			d.log.Info("uninstall: removed state file", "file", f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			d.log.Error("uninstall: removing a state file failed", "file", f, "err", err)
		}
	}
}

// releaseAll removes the capture of every pod ztunnel knows, captured or
// not, including persisted pods that were not resynced yet, and closes
// their listeners and connections at once.
func (d *Daemon) releaseAll(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopping = true
	for p := range d.draining {
		_ = p.Close()
	}
	seen := map[string]bool{}
	release := func(ps *podState) {
		if err := d.release(ctx, ps, true, false); err != nil {
			d.log.Error("uninstall: releasing a pod failed", "pod", ps.pod.Key(), "netns", ps.pod.NetnsPath, "err", err)
			return
		}
		d.log.Info("uninstall: pod released", "pod", ps.pod.Key())
	}
	for uid, ps := range d.pods {
		seen[uid] = true
		release(ps)
	}
	for _, p := range d.enroll.Pods() {
		if !seen[p.UID] {
			release(&podState{pod: p})
		}
	}
	d.pods = map[string]*podState{}
	d.updateGauges()
}
