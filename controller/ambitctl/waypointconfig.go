package ambitctl

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/ambit-mesh/ambit/controller/deploy"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/xds"
)

// WaypointAdminPort is the waypoint's admin port (localhost inside its pod).
const WaypointAdminPort = 15000

// WaypointDump is the waypoint's /config_dump document (waypoint/cmd/waypoint
// configDump).
type WaypointDump struct {
	Gateway  string     `json:"gateway"`
	Identity string     `json:"identity"`
	Ready    string     `json:"ready"`
	XDS      xds.Status `json:"xds"`
	Config   struct {
		Routes []struct {
			Service  string `json:"service"`
			Protocol string `json:"protocol"`
			Rules    int    `json:"rules"`
		} `json:"routes"`
		Services       int      `json:"services"`
		Workloads      int      `json:"workloads"`
		Authorizations []string `json:"authorizations"`
		Draining       []string `json:"draining"`
	} `json:"config"`
	Certificates identity.ManagerSnapshot `json:"certificates"`
	Version      string                   `json:"version"`
}

func waypointConfigFlags(fs *flag.FlagSet) func(context.Context, *cli, []string) error {
	podName := fs.String("pod", "", "the waypoint pod to ask (default: the first ready one)")
	output := fs.String("o", "table", "output: table, or json (the document as the waypoint reports it)")
	return func(ctx context.Context, c *cli, args []string) error {
		name := DefaultWaypointName
		switch len(args) {
		case 0:
		case 1:
			name = args[0]
		default:
			return usageErrorf("one waypoint at most, got %q", args)
		}
		if *output != "table" && *output != "json" {
			return usageErrorf("-o %q: want table or json", *output)
		}
		pod, err := pickWaypointPod(ctx, c, c.ns(), name, *podName)
		if err != nil {
			return err
		}
		raw, err := fetchAdmin(ctx, c, pod, WaypointAdminPort, "/config_dump")
		if err != nil {
			return err
		}
		if err := WriteWaypointConfig(c.stdout, raw, *output); err != nil {
			return fmt.Errorf("waypoint pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		return nil
	}
}

// pickWaypointPod finds the pod named podName of the waypoint, or its first
// ready pod.
func pickWaypointPod(ctx context.Context, c *cli, ns, name, podName string) (*corev1.Pod, error) {
	var pods corev1.PodList
	if err := c.client.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{deploy.LabelGatewayName: name}); err != nil {
		return nil, fmt.Errorf("pods of waypoint %s/%s: %w", ns, name, err)
	}
	sort.Slice(pods.Items, func(i, j int) bool { return pods.Items[i].Name < pods.Items[j].Name })
	var names []string
	for i := range pods.Items {
		p := &pods.Items[i]
		names = append(names, p.Name)
		if podName != "" && p.Name == podName {
			return p, nil
		}
	}
	if podName != "" {
		return nil, fmt.Errorf("no pod %s of waypoint %s/%s; its pods: %s", podName, ns, name, dash(strings.Join(names, ", ")))
	}
	for i := range pods.Items {
		if podReady(&pods.Items[i]) {
			return &pods.Items[i], nil
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("waypoint %s/%s has no pod (label %s=%s); try: ambitctl waypoint list -n %s", ns, name, deploy.LabelGatewayName, name, ns)
	}
	return nil, fmt.Errorf("no pod of waypoint %s/%s is ready (%s); choose one with -pod", ns, name, strings.Join(names, ", "))
}

// WriteWaypointConfig prints the waypoint's /config_dump document raw as a
// summary and tables, or as JSON (output "table" or "json").
func WriteWaypointConfig(w io.Writer, raw []byte, output string) error {
	var d WaypointDump
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("not a waypoint config dump: %w", err)
	}
	if output == "json" {
		var v any = json.RawMessage(raw)
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	fmt.Fprintf(w, "waypoint %s (%s), identity %s\nready: %s; controller: %s\n", d.Gateway, d.Version, d.Identity, d.Ready, xdsState(d.XDS))
	fmt.Fprintf(w, "configuration: %d services, %d workloads; policies in force: %s\n", d.Config.Services, d.Config.Workloads, dash(strings.Join(d.Config.Authorizations, ", ")))
	if len(d.Config.Draining) > 0 {
		fmt.Fprintf(w, "draining (left the configuration, still served): %s\n", strings.Join(d.Config.Draining, ", "))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE:PORT\tPROTOCOL\tRULES")
	for _, r := range d.Config.Routes {
		proto := r.Protocol
		if proto == "UNSPECIFIED" {
			proto = "sniffed" // nothing declares it: the waypoint looks at the first bytes
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\n", r.Service, proto, r.Rules)
	}
	fmt.Fprintln(tw)
	certificatesTable(tw, d.Certificates, "")
	return tw.Flush()
}
