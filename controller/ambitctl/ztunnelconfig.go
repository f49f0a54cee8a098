package ambitctl

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	streamhttp "k8s.io/streaming/pkg/httpstream"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/xds"
)

// ZtunnelAdminPort is ztunnel's admin port (localhost inside its pod).
const ZtunnelAdminPort = 15000

// ZtunnelDump is the part of ztunnel's /config_dump (ztunnel/daemon
// ConfigDump) that ztunnel-config shows.
type ZtunnelDump struct {
	Node           string                     `json:"node"`
	Ready          string                     `json:"ready"`
	XDS            xds.Status                 `json:"xds"`
	Workloads      map[string]json.RawMessage `json:"workloads"`
	Services       map[string]json.RawMessage `json:"services"`
	Authorizations map[string]json.RawMessage `json:"authorizations"`
	Pods           []ZtunnelPod               `json:"pods"`
	Certificates   identity.ManagerSnapshot   `json:"certificates"`
}

// ZtunnelPod is one pod ztunnel was told about.
type ZtunnelPod struct {
	Pod struct {
		UID       string   `json:"uid"`
		Namespace string   `json:"namespace"`
		Name      string   `json:"name"`
		PodIPs    []string `json:"podIPs"`
	} `json:"pod"`
	State    string `json:"state"`
	Identity string `json:"identity,omitempty"`
	Error    string `json:"error,omitempty"`
}

// ztunnel-config sections.
var ztunnelSections = []string{"pods", "workloads", "services", "policies", "certificates", "all"}

func ztunnelConfigFlags(fs *flag.FlagSet) func(context.Context, *cli, []string) error {
	node := fs.String("node", "", "the node whose ztunnel to ask (needed when ztunnel runs on more than one)")
	output := fs.String("o", "table", "output: table, or json (the section as ztunnel reports it; all: the whole dump)")
	return func(ctx context.Context, c *cli, args []string) error {
		section := "pods"
		switch len(args) {
		case 0:
		case 1:
			section = args[0]
		default:
			return usageErrorf("one section at most, got %q", args)
		}
		if !slices.Contains(ztunnelSections, section) {
			return usageErrorf("section %q: want one of %s", section, strings.Join(ztunnelSections, ", "))
		}
		if *output != "table" && *output != "json" {
			return usageErrorf("-o %q: want table or json", *output)
		}
		pod, err := pickZtunnel(ctx, c, *node)
		if err != nil {
			return err
		}
		raw, err := fetchAdmin(ctx, c, pod, ZtunnelAdminPort, "/config_dump")
		if err != nil {
			return err
		}
		// -n narrows the tables; without it they show every namespace.
		if err := WriteZtunnelConfig(c.stdout, raw, section, *output, c.namespace); err != nil {
			return fmt.Errorf("ztunnel %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		return nil
	}
}

// WriteZtunnelConfig prints a section (pods, workloads, services, policies,
// certificates or all) of ztunnel's /config_dump document raw, as tables
// or as JSON (output "table" or "json"). A namespace other than "" keeps
// only its rows in the tables (JSON is printed as ztunnel wrote it).
func WriteZtunnelConfig(w io.Writer, raw []byte, section, output, namespace string) error {
	var dump ZtunnelDump
	if err := json.Unmarshal(raw, &dump); err != nil {
		return fmt.Errorf("not a ztunnel config dump: %w", err)
	}
	if output == "json" {
		return writeSectionJSON(w, raw, section)
	}
	return writeSectionTable(w, &dump, section, namespace)
}

// pickZtunnel finds the ztunnel pod on node, or the only one.
func pickZtunnel(ctx context.Context, c *cli, node string) (*corev1.Pod, error) {
	pods, err := ztunnelPods(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("ztunnel pods in %s: %w", c.systemNamespace, err)
	}
	var nodes []string
	var match []corev1.Pod
	for _, p := range pods {
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		nodes = append(nodes, p.Spec.NodeName)
		if node == "" || p.Spec.NodeName == node {
			match = append(match, p)
		}
	}
	sort.Strings(nodes)
	switch {
	case len(nodes) == 0:
		return nil, fmt.Errorf("no running ztunnel pod in %s (label %s); is Ambit installed? try: ambitctl check", c.systemNamespace, ZtunnelPodLabel)
	case len(match) == 0:
		return nil, fmt.Errorf("no running ztunnel on node %q; ztunnel runs on: %s", node, strings.Join(nodes, ", "))
	case len(match) > 1:
		return nil, usageErrorf("ztunnel runs on %d nodes (%s): choose one with -node", len(nodes), strings.Join(nodes, ", "))
	}
	return &match[0], nil
}

// fetchAdmin port-forwards to the pod's port and GETs path from it, as
// kubectl port-forward would (WebSocket tunnelling, SPDY when the server
// does not offer it): the admin endpoints listen on the pod's localhost.
func fetchAdmin(ctx context.Context, c *cli, pod *corev1.Pod, port int, path string) ([]byte, error) {
	target := pod.Namespace + "/" + pod.Name
	u := c.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	dialer, err := portForwardDialer(c, u)
	if err != nil {
		return nil, fmt.Errorf("port-forward to %s: %w", target, err)
	}
	stop, ready := make(chan struct{}), make(chan struct{})
	var errOut strings.Builder
	pf, err := portforward.NewOnAddressesForStreaming(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, &errOut)
	if err != nil {
		return nil, fmt.Errorf("port-forward to %s: %w", target, err)
	}
	done := make(chan error, 1)
	go func() { done <- pf.ForwardPorts() }()
	defer func() {
		close(stop)
		<-done
	}()
	select {
	case <-ready:
	case err := <-done:
		done <- err // for the deferred wait
		return nil, fmt.Errorf("port-forward to %s: %v %s", target, err, strings.TrimSpace(errOut.String()))
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ports, err := pf.GetPorts()
	if err != nil || len(ports) != 1 {
		return nil, fmt.Errorf("port-forward to %s: no local port (%v)", target, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", ports[0].Local, path), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s admin (port %d): %v %s", target, port, err, strings.TrimSpace(errOut.String()))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s admin: %w", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s admin: %s: %s", target, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

func portForwardDialer(c *cli, u *url.URL) (streamhttp.Dialer, error) {
	transport, upgrader, err := spdy.RoundTripperFor(c.restConfig)
	if err != nil {
		return nil, err
	}
	spdyDialer := spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	ws, err := portforward.NewSPDYOverWebsocketDialerForStreaming(u, c.restConfig)
	if err != nil {
		return nil, err
	}
	return portforward.NewFallbackDialerForStreaming(ws, spdyDialer, func(err error) bool {
		return streamhttp.IsUpgradeFailure(err) || streamhttp.IsHTTPSProxyError(err)
	}), nil
}

// writeSectionJSON prints a section of the raw dump, indented.
func writeSectionJSON(w io.Writer, raw []byte, section string) error {
	key := map[string]string{"policies": "authorizations"}[section]
	if key == "" {
		key = section
	}
	var out any
	if section == "all" {
		out = json.RawMessage(raw)
	} else {
		var doc map[string]json.RawMessage
		if err := json.Unmarshal(raw, &doc); err != nil {
			return err
		}
		out = doc[key]
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// writeSectionTable prints a section as a table.
func writeSectionTable(w io.Writer, d *ZtunnelDump, section, namespace string) error {
	in := func(ns string) bool { return namespace == "" || ns == namespace }
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "ztunnel on node %s: ready: %s; controller: %s\n\n", d.Node, d.Ready, xdsState(d.XDS))
	sections := []string{section}
	if section == "all" {
		sections = ztunnelSections[:len(ztunnelSections)-1]
	}
	for i, s := range sections {
		if i > 0 {
			fmt.Fprintln(tw)
		}
		var err error
		switch s {
		case "pods":
			err = podsTable(tw, d, in)
		case "workloads":
			err = workloadsTable(tw, d, in)
		case "services":
			err = servicesTable(tw, d, in)
		case "policies":
			err = policiesTable(tw, d, in)
		case "certificates":
			certificatesTable(tw, d.Certificates, namespace)
		}
		if err != nil {
			return err
		}
	}
	return tw.Flush()
}

// xdsState says how ztunnel stands with the controller: the last error
// only while it is not connected (once connected it is history), and any
// configuration it rejected.
func xdsState(st xds.Status) string {
	s := "connected"
	switch {
	case !st.Connected && st.FromDisk:
		s = "not connected, running on the configuration saved on disk"
	case !st.Connected:
		s = "not connected"
	}
	if !st.Connected && st.LastError != "" {
		s += " (last error: " + st.LastError + ")"
	}
	if st.Nacks > 0 {
		s += fmt.Sprintf("; rejected %d configuration updates (its log says why)", st.Nacks)
	}
	return s
}

// shortName is "echo" of "shop/echo", the form the configuration names
// workloads, services and policies in.
func shortName(namespace, name string) string {
	return strings.TrimPrefix(name, namespace+"/")
}

func podsTable(tw io.Writer, d *ZtunnelDump, in func(string) bool) error {
	fmt.Fprintln(tw, "NAMESPACE\tPOD\tIP\tSTATE\tIDENTITY")
	for _, p := range d.Pods {
		if !in(p.Pod.Namespace) {
			continue
		}
		state := p.State
		if p.Error != "" {
			state += ": " + p.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Pod.Namespace, p.Pod.Name, dash(strings.Join(p.Pod.PodIPs, ",")), state, dash(p.Identity))
	}
	return nil
}

// decodeAll decodes the protobuf JSON entries of m into new(T)s, sorted by
// key.
func decodeAll[T any, P interface {
	*T
	protoMessage
}](m map[string]json.RawMessage) ([]P, error) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]P, 0, len(keys))
	opts := protojson.UnmarshalOptions{DiscardUnknown: true}
	for _, k := range keys {
		var v P = new(T)
		if err := opts.Unmarshal(m[k], v); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		out = append(out, v)
	}
	return out, nil
}

type protoMessage = proto.Message

func workloadsTable(tw io.Writer, d *ZtunnelDump, in func(string) bool) error {
	ws, err := decodeAll[configv1alpha1.Workload](d.Workloads)
	if err != nil {
		return fmt.Errorf("workloads: %w", err)
	}
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tADDRESSES\tNODE\tIN MESH\tREADY\tWAYPOINT\tIDENTITY")
	for _, w := range ws {
		if !in(w.GetNamespace()) {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", w.GetNamespace(), shortName(w.GetNamespace(), w.GetName()), dash(strings.Join(w.GetAddresses(), ",")),
			dash(w.GetNode()), yesNo(w.GetEnrolled()), yesNo(w.GetReady()), dash(w.GetWaypoint().GetGateway()), dash(w.GetIdentity()))
	}
	return nil
}

func servicesTable(tw io.Writer, d *ZtunnelDump, in func(string) bool) error {
	ss, err := decodeAll[configv1alpha1.Service](d.Services)
	if err != nil {
		return fmt.Errorf("services: %w", err)
	}
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tVIPS\tPORTS\tENDPOINTS (READY/ALL)\tWAYPOINT")
	for _, s := range ss {
		if !in(s.GetNamespace()) {
			continue
		}
		var ports []string
		for _, p := range s.GetPorts() {
			ports = append(ports, fmt.Sprintf("%d->%d", p.GetPort(), p.GetTargetPort()))
		}
		ready := 0
		for _, e := range s.GetEndpoints() {
			if e.GetReady() {
				ready++
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\n", s.GetNamespace(), shortName(s.GetNamespace(), s.GetName()), dash(strings.Join(s.GetVips(), ",")),
			dash(strings.Join(ports, ",")), ready, len(s.GetEndpoints()), dash(s.GetWaypoint().GetGateway()))
	}
	return nil
}

func policiesTable(tw io.Writer, d *ZtunnelDump, in func(string) bool) error {
	as, err := decodeAll[configv1alpha1.Authorization](d.Authorizations)
	if err != nil {
		return fmt.Errorf("policies: %w", err)
	}
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tSCOPE\tACTION\tRULES\tTARGETS")
	for _, a := range as {
		if !in(a.GetNamespace()) {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", a.GetNamespace(), shortName(a.GetNamespace(), a.GetName()), enumName(a.GetScope().String(), "SCOPE_"),
			enumName(a.GetAction().String(), "ACTION_"), len(a.GetRules()), dash(strings.Join(a.GetTargets(), ",")))
	}
	return nil
}

// certificatesTable lists the workload certificates (those of namespace's
// identities, when namespace is not "") and the roots.
func certificatesTable(tw io.Writer, certs identity.ManagerSnapshot, namespace string) {
	fmt.Fprintln(tw, "IDENTITY\tSERIAL\tVALID\tNOT AFTER\tNEXT REFRESH\tLAST ERROR")
	for _, c := range certs.Identities {
		if namespace != "" && !strings.Contains(c.ID, "/ns/"+namespace+"/") {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, dash(c.Serial), yesNo(c.Valid), timeOrDash(c.NotAfter), timeOrDash(c.NextRefresh), dash(c.LastError))
	}
	for _, r := range certs.Roots {
		fmt.Fprintf(tw, "root %s\t%s\t\t%s\t\t\n", r.Subject, r.Serial, timeOrDash(r.NotAfter))
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// enumName is "ALLOW" of "ACTION_ALLOW".
func enumName(s, prefix string) string {
	return strings.TrimPrefix(s, prefix)
}
