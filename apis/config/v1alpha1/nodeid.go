package configv1alpha1

import (
	"fmt"
	"strings"
)

// The xDS node ID a data plane sends says who it is, and so which subset of
// the configuration it receives:
//
//	ztunnel~<node name>                 a ztunnel: every Workload and Service,
//	                                    and the Authorizations ztunnels enforce
//	waypoint~<namespace>/<gateway>      a waypoint: its WaypointConfig, every
//	                                    Workload and Service, and the
//	                                    Authorizations that target it
const (
	NodeKindZtunnel  = "ztunnel"
	NodeKindWaypoint = "waypoint"
)

// ZtunnelNodeID is the node ID of the ztunnel on a Kubernetes node.
func ZtunnelNodeID(node string) string { return NodeKindZtunnel + "~" + node }

// WaypointNodeID is the node ID of the waypoint of Gateway namespace/name.
func WaypointNodeID(namespace, name string) string {
	return NodeKindWaypoint + "~" + namespace + "/" + name
}

// ParseNodeID splits a node ID into its kind and name ("<node>" for a
// ztunnel, "<namespace>/<gateway>" for a waypoint).
func ParseNodeID(id string) (kind, name string, err error) {
	kind, name, ok := strings.Cut(id, "~")
	switch {
	case !ok || name == "":
		return "", "", fmt.Errorf("node ID %q: want ztunnel~<node> or waypoint~<namespace>/<gateway>", id)
	case kind == NodeKindZtunnel && !strings.Contains(name, "/"):
		return kind, name, nil
	case kind == NodeKindWaypoint:
		ns, gw, ok := strings.Cut(name, "/")
		if ok && ns != "" && gw != "" && !strings.Contains(gw, "/") {
			return kind, name, nil
		}
	}
	return "", "", fmt.Errorf("node ID %q: want ztunnel~<node> or waypoint~<namespace>/<gateway>", id)
}
