package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/config"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// reconcileTimeout bounds the capture or release of one pod outside a hook.
const reconcileTimeout = 30 * time.Second

// podState is one reported pod.
type podState struct {
	pod enroll.Pod
	// While captured: the open namespace, the proxy and the identity.
	ns    *redirect.Netns
	proxy *proxy.Pod
	id    identity.SPIFFEID
	// socks is the pod's SOCKS5 listener, nil when there is none.
	socks *podSOCKS
	// dns answers the pod's captured DNS queries (Config.DNSCapture), nil
	// when they are not captured.
	dns *proxy.DNSServer
	// released is true once the rules were removed because the
	// configuration says the pod is not enrolled.
	released bool
	// gen counts captures: a drain started by a release removes the
	// pod's table at its end only if no capture came since.
	gen int
	// draining counts the pod's proxies that drain after a release.
	draining int
	// lastErr is the last capture or release failure ("" after success).
	lastErr string
}

func (ps *podState) workloadName() string { return ps.pod.Namespace + "/" + ps.pod.Name }

// resyncKey marks the context of the OnAdd calls of the start-up Resync.
type resyncKey struct{}

// onAdd is the enrolment OnAdd hook: remember the pod and capture it if the
// configuration says so. A failed capture fails the AddPod. A pod the
// configuration does not know yet is waited for (Config.PodConfigWait),
// except during Resync.
func (d *Daemon) onAdd(ctx context.Context, pod enroll.Pod) error {
	resync := ctx.Value(resyncKey{}) != nil
	snap := d.store.Snapshot()
	var waited time.Duration
	if !resync {
		snap, waited = d.awaitWorkload(ctx, pod)
	}
	if w := snap.Workload(pod.Namespace + "/" + pod.Name); w != nil && w.Enrolled() && w.HasIdentity() {
		done := d.prefetch(ctx, []identity.SPIFFEID{w.Identity})
		defer done()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return errors.New("ztunnel is stopping")
	}
	ps := d.pods[pod.UID]
	if ps == nil || !ps.pod.Equal(pod) {
		if ps != nil {
			_ = d.release(ctx, ps, true, false)
		}
		ps = &podState{pod: pod}
		d.pods[pod.UID] = ps
	}
	// A failed capture fails the hook (so a CNI ADD fails), but the pod stays
	// reported with its error: the enrolment server keeps it too, and the
	// retry loop captures it once the cause (say, an unreachable CA) is gone.
	// A CNI DEL (onRemove) forgets it.
	snap = d.store.Snapshot()
	if knownWorkload(snap, pod) == nil && !resync {
		d.metrics.PodsUnknownAtAdd.Inc()
		d.log.Warn("pod not in the configuration yet; it starts without capture and is captured once its Workload arrives",
			"pod", pod.Key(), "waited", waited.Round(time.Millisecond))
	}
	err := d.reconcile(ctx, ps, snap)
	d.updateGauges()
	return err
}

// knownWorkload returns pod's Workload if the configuration knows the pod
// well enough to decide: the Workload exists and there is an address for
// the pod (from the enrolment or the Workload; the controller sends a
// scheduled pod's Workload before the kubelet reports its IP).
func knownWorkload(snap *config.Snapshot, pod enroll.Pod) *config.Workload {
	w := snap.Workload(pod.Namespace + "/" + pod.Name)
	if w == nil || (len(w.Addresses) == 0 && len(pod.PodIPs) == 0) {
		return nil
	}
	return w
}

// awaitWorkload waits until the configuration knows pod, at most
// Config.PodConfigWait (or until ctx ends), and returns the last snapshot
// and how long it waited.
func (d *Daemon) awaitWorkload(ctx context.Context, pod enroll.Pod) (*config.Snapshot, time.Duration) {
	snap, next := d.store.Next()
	if knownWorkload(snap, pod) != nil || d.cfg.PodConfigWait < 0 {
		return snap, 0
	}
	start := time.Now()
	timer := time.NewTimer(d.cfg.PodConfigWait)
	defer timer.Stop()
	for {
		select {
		case <-next:
		case <-timer.C:
			return d.store.Snapshot(), time.Since(start)
		case <-ctx.Done():
			return d.store.Snapshot(), time.Since(start)
		}
		if snap, next = d.store.Next(); knownWorkload(snap, pod) != nil {
			waited := time.Since(start)
			d.log.Info("pod's Workload arrived during its enrolment", "pod", pod.Key(), "waited", waited.Round(time.Millisecond))
			return snap, waited
		}
	}
}

// onRemove is the enrolment OnRemove hook: release the pod and forget it.
func (d *Daemon) onRemove(ctx context.Context, pod enroll.Pod) error {
	d.forget(pod.UID)
	d.mu.Lock()
	defer d.mu.Unlock()
	ps := d.pods[pod.UID]
	if ps == nil {
		return nil
	}
	delete(d.pods, pod.UID)
	err := d.release(ctx, ps, true, false)
	d.updateGauges()
	return err
}

// reconcileAll re-evaluates every reported pod against the configuration.
func (d *Daemon) reconcileAll(ctx context.Context) {
	snap := d.store.Snapshot()
	// Certificates of pods about to be captured are fetched before taking
	// the lock, so that a slow CA does not hold up enrolment of other pods.
	var ids []identity.SPIFFEID
	d.mu.Lock()
	for _, ps := range d.pods {
		if w := snap.Workload(ps.workloadName()); w != nil && w.Enrolled() && w.HasIdentity() && (ps.proxy == nil || ps.id != w.Identity) {
			ids = append(ids, w.Identity)
		}
	}
	d.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, reconcileTimeout)
	done := d.prefetch(pctx, ids)
	cancel()
	defer done()

	var gone []enroll.Pod
	d.mu.Lock()
	if d.stopping {
		d.mu.Unlock()
		return
	}
	for _, ps := range d.pods {
		pctx, cancel := context.WithTimeout(ctx, reconcileTimeout)
		err := d.reconcile(pctx, ps, snap)
		cancel()
		if err != nil {
			if why := netnsGone(d.netnsAt(ps.pod.NetnsPath)); why != "" {
				gone = append(gone, ps.pod)
				d.log.Info("dropping pod whose netns is gone", "pod", ps.pod.Key(), "netns", ps.pod.NetnsPath, "reason", why, "err", err)
				continue
			}
			d.log.Error("pod enrolment failed", "pod", ps.pod.Key(), "err", err)
		}
	}
	d.updateGauges()
	d.mu.Unlock()
	// The pod was deleted while nobody told ztunnel (no CNI DEL reached
	// it): forget it rather than retry forever. Remove calls onRemove,
	// which takes d.mu, hence after unlocking.
	for _, p := range gone {
		if _, err := d.enroll.Remove(ctx, p.UID, p.ContainerID); err != nil {
			d.log.Warn("dropping pod whose netns is gone", "pod", p.Key(), "err", err)
		}
	}
}

// netnsAt is where ztunnel opens the namespace a pod's enrolment names
// (enroll.HostNetnsPath: /proc/<pid>/ns/net through the host's /proc).
func (d *Daemon) netnsAt(path string) string {
	return enroll.HostNetnsPath(path, d.cfg.Enroll.HostProc)
}

// netnsGone returns why path no longer is a namespace file (removed, or
// unmounted so that an empty file remains), or "" when it still is one or
// that cannot be told.
func netnsGone(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "netns file does not exist"
		}
		return ""
	}
	if uint32(st.Type) != unix.NSFS_MAGIC {
		return fmt.Sprintf("netns path is no longer a namespace (filesystem type %#x)", st.Type)
	}
	return ""
}

func (d *Daemon) hasFailures() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ps := range d.pods {
		if ps.lastErr != "" {
			return true
		}
	}
	return false
}

// reconcile captures or releases one pod as snap says. Called with d.mu held.
func (d *Daemon) reconcile(ctx context.Context, ps *podState, snap *config.Snapshot) error {
	w := knownWorkload(snap, ps.pod)
	if w == nil {
		// Not known (yet): leave it as it is.
		return nil
	}
	want := w.Enrolled() && w.HasIdentity()
	var err error
	switch {
	case want && ps.proxy != nil && ps.id == w.Identity:
		return nil
	case want && ps.proxy != nil:
		d.log.Info("pod identity changed; capturing again", "pod", ps.pod.Key(), "old", ps.id.String(), "new", w.Identity.String())
		_ = d.release(ctx, ps, false, true)
		err = d.capture(ctx, ps, w)
	case want:
		err = d.capture(ctx, ps, w)
	case ps.proxy != nil || !ps.released:
		// New connections bypass ztunnel at once; those it proxies may
		// finish (Config.DrainTimeout).
		err = d.release(ctx, ps, true, d.cfg.DrainTimeout > 0)
		if err == nil {
			ps.released = true
			d.log.Info("pod not enrolled in the configuration; traffic not captured", "pod", ps.pod.Key())
		}
	}
	ps.lastErr = ""
	if err != nil {
		ps.lastErr = err.Error()
	}
	return err
}

// capture starts serving a pod: certificate, listeners, rules, proxy.
func (d *Daemon) capture(ctx context.Context, ps *podState, w *config.Workload) (err error) {
	pod := ps.pod
	if err := d.certs.Add(ctx, w.Identity); err != nil {
		// Add keeps tracking it and retries; drop it unless another pod uses it.
		if d.idRefs[w.Identity] == 0 {
			d.certs.Remove(w.Identity)
		}
		return fmt.Errorf("certificate for %s: %w", w.Identity, err)
	}
	d.idRefs[w.Identity]++
	defer func() {
		if err != nil {
			d.unref(w.Identity)
		}
	}()
	ns, err := redirect.OpenNetns(d.netnsAt(pod.NetnsPath))
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = ns.Close()
		}
	}()
	rcfg := redirect.Config{ProbeSources: prefixes(pod.NodeIPs)}
	if len(pod.NodeIPs) == 0 {
		if rcfg, err = redirect.DefaultConfig(ctx, ns); err != nil {
			return fmt.Errorf("probe sources: %w", err)
		}
	}
	rcfg.OriginalSource = !d.cfg.NoOriginalSource
	ls, err := ns.ListenAll(ctx)
	if err != nil {
		return fmt.Errorf("listeners: %w", err)
	}
	var dnsConns []net.PacketConn
	// A pod with dnsPolicy Default asks the node's resolver, which ztunnel
	// does not know (it would forward to the cluster's DNS): its DNS is
	// left alone.
	if d.cfg.DNSCapture && w.Proto.GetDns().GetPolicy() != configv1alpha1.DNSConfig_POLICY_DEFAULT {
		dnsConns = d.openPodDNS(ctx, ns, w)
		rcfg.DNSCapture = len(dnsConns) > 0
	}
	if rcfg, err = redirect.Install(ctx, ns, rcfg); err != nil {
		_ = ls.Close()
		for _, pc := range dnsConns {
			_ = pc.Close()
		}
		return fmt.Errorf("capture rules: %w", err)
	}
	ips := slices.Clone(pod.PodIPs)
	for _, a := range w.Addresses {
		if !slices.Contains(ips, a) {
			ips = append(ips, a)
		}
	}
	ps.ns, ps.id, ps.released = ns, w.Identity, false
	ps.gen++
	ps.proxy = proxy.StartPod(d.env, proxy.PodConfig{Name: w.Name, IPs: ips, Identity: w.Identity, Netns: ns, Listeners: ls,
		OriginalSource: rcfg.OriginalSource})
	if !d.cfg.DisablePodSOCKS5 {
		ps.socks = d.startPodSOCKS(ctx, ns, w, ips)
	}
	if len(dnsConns) > 0 {
		env := *d.env
		env.Logger = d.env.Logger.With("pod", w.Name)
		ps.dns = proxy.NewPodDNS(&env, w.Name, ns.DialUDP)
		for _, pc := range dnsConns {
			ps.dns.Serve(pc)
		}
	}
	d.log.Info("pod captured", "pod", pod.Key(), "identity", w.Identity.String(), "ips", fmtAddrs(ips))
	return nil
}

// release stops serving a pod; with removeRules it also deletes the capture
// rules. With drain, the connections being proxied may finish (up to
// Config.DrainTimeout) in the background; otherwise they are closed now.
//
// The rules of a captured pod go in two steps: every rule first
// (redirect.StopCapture), so that new connections no longer come to
// ztunnel, and the table (with it the address translation of the
// connections redirected earlier) only once the proxy has closed those
// connections, so that they go on while they drain and their FIN reaches
// the application. After a drain, the table is removed only if the pod was
// not captured again meanwhile (its new rules replaced it) nor forgotten.
// A pod that is not captured only gets its rules removed.
func (d *Daemon) release(ctx context.Context, ps *podState, removeRules, drain bool) error {
	var err error
	twoStep := removeRules && ps.proxy != nil && ps.ns != nil
	if twoStep {
		if serr := redirect.StopCapture(ctx, ps.ns); serr != nil {
			d.log.Warn("pod release: could not stop the capture before closing its connections; removing the rules first", "pod", ps.pod.Key(), "err", serr)
			twoStep = false
			// Without the table the redirected connections lose their
			// translation: draining them would only make them hang.
			drain = false
		}
	}
	if removeRules && !twoStep {
		if ps.ns != nil {
			err = redirect.Remove(ctx, ps.ns)
		} else if ns, oerr := redirect.OpenNetns(d.netnsAt(ps.pod.NetnsPath)); oerr == nil {
			err = redirect.Remove(ctx, ns)
			_ = ns.Close()
		} else if !errors.Is(oerr, fs.ErrNotExist) {
			err = oerr
		}
		if err != nil {
			err = fmt.Errorf("remove capture rules: %w", err)
		}
	}
	if ps.proxy != nil {
		p, ns := ps.proxy, ps.ns
		if drain {
			done := p.Drain(d.cfg.DrainTimeout)
			d.draining[p] = struct{}{}
			d.drainWG.Add(1)
			gen := ps.gen
			ps.draining++
			go func() {
				defer d.drainWG.Done()
				<-done
				d.mu.Lock()
				delete(d.draining, p)
				ps.draining--
				d.updateGauges()
				if twoStep && d.pods[ps.pod.UID] == ps && ps.gen == gen && !d.stopping {
					d.removeDrained(ps, ns)
				}
				d.mu.Unlock()
				_ = ns.Close()
			}()
		} else if rerr := d.closePod(ctx, ps.pod, p, ns, twoStep); rerr != nil {
			err = fmt.Errorf("remove capture rules: %w", rerr)
		}
		if ps.dns != nil {
			_ = ps.dns.Close()
		}
		if sk := ps.socks; sk != nil {
			if drain {
				done := sk.drain(d.cfg.DrainTimeout)
				d.draining[sk.server] = struct{}{}
				d.drainWG.Add(1)
				go func() {
					defer d.drainWG.Done()
					<-done
					d.mu.Lock()
					delete(d.draining, sk.server)
					d.mu.Unlock()
				}()
			} else {
				sk.close()
			}
		}
		d.unref(ps.id)
		d.log.Info("pod released", "pod", ps.pod.Key(), "rulesRemoved", removeRules, "drain", drain)
	}
	ps.proxy, ps.ns, ps.id, ps.socks, ps.dns = nil, nil, identity.SPIFFEID{}, nil, nil
	return err
}

// removeDrained removes the table of a released pod whose connections
// have drained. Called with d.mu held.
func (d *Daemon) removeDrained(ps *podState, ns *redirect.Netns) {
	ctx, cancel := context.WithTimeout(context.Background(), reconcileTimeout)
	defer cancel()
	if err := redirect.Remove(ctx, ns); err != nil {
		d.log.Warn("pod release: could not remove the capture table after draining", "pod", ps.pod.Key(), "err", err)
		ps.lastErr = fmt.Sprintf("remove capture rules after draining: %v", err)
		return
	}
	d.log.Info("pod drained; capture table removed", "pod", ps.pod.Key())
}

// closeWait bounds how long a release waits for a pod's proxy to close.
const closeWait = 5 * time.Second

// closePod closes a pod's proxy (its listeners first, then its connections)
// and then its namespace, waiting up to closeWait: a connection that does
// not end must not keep the daemon's lock, which every capture, release and
// CNI ADD of the node needs. Past closeWait the close goes on in the
// background and the pod is released anyway (its listeners are closed by
// then, so it can be captured again). With removeTable, the capture table is
// deleted after the wait (see release), before the namespace is closed.
func (d *Daemon) closePod(ctx context.Context, pod enroll.Pod, p *proxy.Pod, ns *redirect.Netns, removeTable bool) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Close()
	}()
	closed := true
	select {
	case <-done:
	case <-time.After(closeWait):
		closed = false
		d.log.Error("pod release: its connections did not end; closing them in the background", "pod", pod.Key(), "waited", closeWait)
	}
	var err error
	if removeTable {
		err = redirect.Remove(ctx, ns)
	}
	if closed {
		_ = ns.Close()
	} else {
		// The proxy's goroutines may still enter the namespace.
		go func() {
			<-done
			_ = ns.Close()
		}()
	}
	return err
}

// prefetch obtains certificates for ids concurrently, without d.mu. The
// returned function (call it once the captures are done, without d.mu)
// drops those that no captured pod ended up using. Failures are left for
// capture to report.
func (d *Daemon) prefetch(ctx context.Context, ids []identity.SPIFFEID) (done func()) {
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = d.certs.Add(ctx, id)
		}()
	}
	wg.Wait()
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, id := range ids {
			if d.idRefs[id] == 0 {
				d.certs.Remove(id)
			}
		}
	}
}

func (d *Daemon) unref(id identity.SPIFFEID) {
	d.idRefs[id]--
	if d.idRefs[id] <= 0 {
		delete(d.idRefs, id)
		d.certs.Remove(id)
	}
}

// stopAll stops serving every pod at shutdown, leaving the rules in place.
// The capture rules stay in place, so that traffic fails rather than
// bypassing the mesh while ztunnel is away; each pod's listeners close at
// once (a new ztunnel can bind them) and its open connections may finish for
// up to Config.ShutdownDrain. Connections still draining from an identity
// change are closed at once.
func (d *Daemon) stopAll() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopping = true
	for p := range d.draining {
		_ = p.Close()
	}
	for _, ps := range d.pods {
		if ps.proxy != nil {
			done, ns := ps.proxy.Drain(d.cfg.ShutdownDrain), ps.ns
			d.drainWG.Add(1)
			go func() {
				defer d.drainWG.Done()
				<-done
				_ = ns.Close()
			}()
			ps.proxy, ps.ns = nil, nil
		}
		if ps.dns != nil {
			_ = ps.dns.Close()
			ps.dns = nil
		}
		if ps.socks != nil {
			done := ps.socks.drain(d.cfg.ShutdownDrain)
			d.drainWG.Add(1)
			go func() {
				defer d.drainWG.Done()
				<-done
			}()
			ps.socks = nil
		}
	}
}

func fmtAddrs(as []netip.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}
