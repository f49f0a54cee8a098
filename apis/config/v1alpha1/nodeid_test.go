package configv1alpha1

import "testing"

func TestNodeID(t *testing.T) {
	for id, want := range map[string][2]string{
		ZtunnelNodeID("node-a"):            {NodeKindZtunnel, "node-a"},
		WaypointNodeID("shop", "waypoint"): {NodeKindWaypoint, "shop/waypoint"},
	} {
		kind, name, err := ParseNodeID(id)
		if err != nil || kind != want[0] || name != want[1] {
			t.Errorf("ParseNodeID(%q) = %q, %q, %v; want %q, %q", id, kind, name, err, want[0], want[1])
		}
	}
	for _, bad := range []string{"", "ztunnel", "ztunnel~", "sidecar~x", "ztunnel~a/b", "waypoint~shop", "waypoint~/gw", "waypoint~shop/", "waypoint~a/b/c"} {
		if _, _, err := ParseNodeID(bad); err == nil {
			t.Errorf("ParseNodeID(%q) accepted", bad)
		}
	}
}
