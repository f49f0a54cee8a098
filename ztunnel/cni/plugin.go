package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	ambitversion "github.com/ambit-mesh/ambit/pkg/version"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
)

// ErrZtunnelRefused is the CNI error code (plugin-specific range, >= 100)
// of an ADD that ztunnel answered with an error: the request was invalid or
// ztunnel could not enrol the pod.
const ErrZtunnelRefused uint = 100

// Versions are the CNI spec versions the plugin supports.
var Versions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// About is printed when the binary runs without CNI_COMMAND.
func About() string {
	return "CNI plugin " + ambitversion.String("ambit-cni") + ": reports pods to the local Ambit ztunnel (chained)"
}

// Plugin implements the CNI commands.
type Plugin struct {
	// Stdout receives the CNI result (os.Stdout when nil).
	Stdout io.Writer
}

// Funcs returns the commands of a Plugin writing to os.Stdout.
func Funcs() skel.CNIFuncs {
	p := &Plugin{}
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// call is one invocation: its config, logger and pod.
type call struct {
	conf   *Config
	log    *slog.Logger
	pod    podArgs
	client *enroll.Client
	close  func()
}

// begin parses the config and CNI_ARGS and opens the log.
func (p *Plugin) begin(cmd string, args *skel.CmdArgs) (*call, error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, err
	}
	log, closeLog := openLog(conf)
	pod := parseArgs(args.Args)
	log = log.With("cmd", cmd, "containerID", args.ContainerID, "pod", pod.String())
	return &call{conf: conf, log: log, pod: pod, client: enroll.NewClient(conf.SocketPath), close: closeLog}, nil
}

// openLog returns the logger the config asks for and a function closing it.
func openLog(conf *Config) (*slog.Logger, func()) {
	if conf.LogFile == "" {
		return slog.New(slog.DiscardHandler), func() {}
	}
	f, err := os.OpenFile(conf.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return slog.New(slog.DiscardHandler), func() {}
	}
	h := slog.NewJSONHandler(f, &slog.HandlerOptions{Level: conf.level})
	return slog.New(h).With("component", "ambit-cni", "pid", os.Getpid()), func() { f.Close() }
}

// ctx returns the context bounding the call's requests to ztunnel.
func (c *call) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.conf.timeout)
}

// skip reports whether the pod is passed through without ztunnel.
func (c *call) skip() bool {
	switch {
	case !c.pod.isPod():
		c.log.Info("not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS); passing through")
		return true
	case c.conf.Excluded(c.pod.Namespace):
		c.log.Debug("namespace excluded; passing through")
		return true
	}
	return false
}

// Add reports the pod to ztunnel and passes prevResult through.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	c, err := p.begin("ADD", args)
	if err != nil {
		return err
	}
	defer c.close()
	ctx, cancel := c.ctx()
	defer cancel()
	if err := c.add(ctx, args); err != nil {
		c.log.Error("ADD failed", "err", err)
		return err
	}
	return p.printPrev(c.conf)
}

func (c *call) add(ctx context.Context, args *skel.CmdArgs) error {
	if c.conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"ambit-cni: no prevResult: ambit-cni must be chained after the plugin that creates the pod's interface", "")
	}
	if c.skip() {
		return nil
	}
	if c.pod.UID == "" {
		return c.unavailable(types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("ambit-cni: K8S_POD_UID is missing from CNI_ARGS for pod %s; the container runtime must pass it", c.pod), ""))
	}
	podIPs, nodeIPs, err := addresses(c.conf.PrevResult)
	if err != nil {
		return err
	}
	req := enroll.AddPodRequest{
		UID: c.pod.UID, Namespace: c.pod.Namespace, Name: c.pod.Name,
		ContainerID: args.ContainerID, NetnsPath: args.Netns,
		PodIPs: strs(podIPs), NodeIPs: strs(nodeIPs),
	}
	resp, err := c.client.AddPod(ctx, req)
	switch {
	case errors.Is(err, enroll.ErrUnavailable):
		return c.unavailable(types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ambit-cni: ztunnel is unreachable at %s, so pod %s cannot be set up in the mesh (is the ztunnel pod on this node running?)",
				c.conf.SocketPath, c.pod), err.Error()))
	case err != nil:
		return types.NewError(ErrZtunnelRefused, fmt.Sprintf("ambit-cni: pod %s: %v", c.pod, err), "")
	}
	c.log.Info("pod reported to ztunnel", "netns", args.Netns, "podIPs", req.PodIPs, "changed", resp.Changed)
	return nil
}

// unavailable applies failOpen to an error that means "cannot tell whether
// the pod must be in the mesh": with failOpen it is logged and dropped.
func (c *call) unavailable(err error) error {
	if c.conf.FailOpen {
		c.log.Warn("failOpen: the pod starts without the mesh", "err", err)
		return nil
	}
	return err
}

// printPrev writes prevResult, unchanged, in the config's version.
func (p *Plugin) printPrev(conf *Config) error {
	res, err := conf.PrevResult.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "ambit-cni: cannot convert prevResult: "+err.Error(), "")
	}
	w := p.Stdout
	if w == nil {
		w = os.Stdout
	}
	if err := res.PrintTo(w); err != nil {
		return types.NewError(types.ErrIOFailure, "ambit-cni: cannot print the result: "+err.Error(), "")
	}
	return nil
}

// Del reports the pod's removal. Past a valid config it never fails: CNI DEL
// must succeed when ztunnel is down or the pod unknown.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := p.begin("DEL", args)
	if err != nil {
		return err
	}
	defer c.close()
	if c.skip() {
		return nil
	}
	if c.pod.UID == "" {
		c.log.Warn("K8S_POD_UID missing from CNI_ARGS; nothing to remove")
		return nil
	}
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.client.RemovePod(ctx, c.pod.UID, args.ContainerID)
	if err != nil {
		c.log.Warn("removing the pod from ztunnel failed; ignored", "err", err)
		return nil
	}
	c.log.Info("pod removal reported to ztunnel", "removed", resp.Removed)
	return nil
}

// Check verifies that ztunnel knows the pod with this sandbox, netns and
// addresses, and passes.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := p.begin("CHECK", args)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.check(args); err != nil {
		c.log.Error("CHECK failed", "err", err)
		return err
	}
	return nil
}

func (c *call) check(args *skel.CmdArgs) error {
	if c.conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "ambit-cni: CHECK needs a prevResult", "")
	}
	if c.skip() {
		return nil
	}
	if c.pod.UID == "" {
		return c.unavailable(types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("ambit-cni: K8S_POD_UID is missing from CNI_ARGS for pod %s", c.pod), ""))
	}
	ctx, cancel := c.ctx()
	defer cancel()
	got, err := c.client.GetPod(ctx, c.pod.UID)
	switch {
	case errors.Is(err, enroll.ErrUnavailable):
		return c.unavailable(types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ambit-cni: ztunnel is unreachable at %s; cannot check pod %s", c.conf.SocketPath, c.pod), err.Error()))
	case enroll.IsNotFound(err):
		return types.NewError(ErrZtunnelRefused, fmt.Sprintf("ambit-cni: pod %s (uid %s) is not known to ztunnel", c.pod, c.pod.UID), "")
	case err != nil:
		return types.NewError(ErrZtunnelRefused, fmt.Sprintf("ambit-cni: pod %s: %v", c.pod, err), "")
	}
	podIPs, _, err := addresses(c.conf.PrevResult)
	if err != nil {
		return err
	}
	var diffs []string
	if got.ContainerID != "" && got.ContainerID != args.ContainerID {
		diffs = append(diffs, fmt.Sprintf("sandbox %s, not %s", got.ContainerID, args.ContainerID))
	}
	if got.NetnsPath != args.Netns {
		diffs = append(diffs, fmt.Sprintf("netns %s, not %s", got.NetnsPath, args.Netns))
	}
	if !slices.Equal(got.PodIPs, podIPs) {
		diffs = append(diffs, fmt.Sprintf("pod IPs %v, not %v", got.PodIPs, podIPs))
	}
	if len(diffs) > 0 {
		return types.NewError(ErrZtunnelRefused, fmt.Sprintf("ambit-cni: ztunnel has pod %s with %v", c.pod, diffs), "")
	}
	return nil
}

// Status succeeds once the config is valid. It deliberately does not probe
// ztunnel: a failing STATUS marks the node's network not ready, which would
// keep the ztunnel pod itself from starting.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	_, err := ParseConfig(args.StdinData)
	return err
}

// GC removes from ztunnel the pods of sandboxes the runtime no longer has
// (CNI 1.1 "cni.dev/valid-attachments"). Like DEL, it never fails past a
// valid config.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := p.begin("GC", args)
	if err != nil {
		return err
	}
	defer c.close()
	valid := map[string]bool{}
	for _, a := range c.conf.ValidAttachments {
		valid[a.ContainerID] = true
	}
	ctx, cancel := c.ctx()
	defer cancel()
	pods, err := c.client.ListPods(ctx)
	if err != nil {
		c.log.Warn("listing ztunnel's pods failed; GC skipped", "err", err)
		return nil
	}
	for _, pod := range pods {
		if pod.ContainerID == "" || valid[pod.ContainerID] {
			continue
		}
		if _, err := c.client.RemovePod(ctx, pod.UID, pod.ContainerID); err != nil {
			c.log.Warn("GC: removing a stale pod failed", "pod", pod.Key(), "err", err)
			continue
		}
		c.log.Info("GC: removed a pod whose sandbox is gone", "pod", pod.Key(), "sandbox", pod.ContainerID)
	}
	return nil
}

// addresses returns the pod's IPs in prevResult (those of interfaces inside
// the sandbox, or not tied to an interface) and their gateways, which stand
// for the node as the pod sees it.
func addresses(prev types.Result) (podIPs, nodeIPs []netip.Addr, err error) {
	res, err := types100.NewResultFromResult(prev)
	if err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure, "ambit-cni: cannot read prevResult: "+err.Error(), "")
	}
	for _, ipc := range res.IPs {
		if ipc.Interface != nil {
			i := *ipc.Interface
			if i < 0 || i >= len(res.Interfaces) || res.Interfaces[i].Sandbox == "" {
				continue // an address on the host side, not the pod's
			}
		}
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && !slices.Contains(podIPs, a.Unmap()) {
			podIPs = append(podIPs, a.Unmap())
		}
		if a, ok := netip.AddrFromSlice(ipc.Gateway); ok && !slices.Contains(nodeIPs, a.Unmap()) {
			nodeIPs = append(nodeIPs, a.Unmap())
		}
	}
	if len(podIPs) == 0 {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig,
			"ambit-cni: prevResult has no pod IP; ambit-cni must run after the plugin that assigns the pod's addresses", "")
	}
	return podIPs, nodeIPs, nil
}

// strs formats addresses.
func strs(as []netip.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}
