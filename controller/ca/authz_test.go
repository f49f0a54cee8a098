package ca

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
)

func TestAuthorize(t *testing.T) {
	store := &podStore{pods: []corev1.Pod{
		pod("ambit-system", "ztunnel-a", "ztunnel", "node-a", corev1.PodRunning),
		pod("ambit-system", "ztunnel-unscheduled", "ztunnel", "", corev1.PodPending),
		pod("shop", "web-1", "web", "node-a", corev1.PodRunning),
		pod("shop", "db-1", "db", "node-b", corev1.PodRunning),
		pod("shop", "job-1", "batch", "node-a", corev1.PodSucceeded),
		pod("shop", "crash-1", "crash", "node-a", corev1.PodFailed),
		pod("shop", "pending-1", "", "node-a", corev1.PodPending), // service account "default"
	}}
	a := &Authorizer{ZtunnelNamespace: "ambit-system", ZtunnelName: "ztunnel", Pods: store}
	web := Caller{Username: "system:serviceaccount:shop:web", Namespace: "shop", ServiceAccount: "web"}
	zt := Caller{Username: "system:serviceaccount:ambit-system:ztunnel", Namespace: "ambit-system", ServiceAccount: "ztunnel", NodeName: "node-a"}
	ztPodOnly := Caller{Username: zt.Username, Namespace: zt.Namespace, ServiceAccount: zt.ServiceAccount, PodName: "ztunnel-a", PodUID: "uid-ztunnel-a"}
	id := func(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

	cases := []struct {
		name   string
		caller Caller
		id     string
		code   codes.Code
		msg    string
	}{
		{"own identity", web, id("shop", "web"), codes.OK, ""},
		{"another SA", web, id("shop", "db"), codes.PermissionDenied, "may obtain only its own identity spiffe://cluster.local/ns/shop/sa/web, not spiffe://cluster.local/ns/shop/sa/db"},
		{"another namespace", web, id("other", "web"), codes.PermissionDenied, "its own identity"},
		{"not a service account", Caller{Username: "alice"}, id("shop", "web"), codes.PermissionDenied, "not a service account"},
		{"ztunnel own", zt, id("ambit-system", "ztunnel"), codes.OK, ""},
		{"ztunnel pod on its node", zt, id("shop", "web"), codes.OK, ""},
		{"ztunnel pod on another node", zt, id("shop", "db"), codes.PermissionDenied, `node "node-a"`},
		{"ztunnel terminated pod", zt, id("shop", "batch"), codes.PermissionDenied, "no running pod"},
		{"ztunnel failed pod", zt, id("shop", "crash"), codes.PermissionDenied, "no running pod"},
		{"ztunnel default SA", zt, id("shop", "default"), codes.OK, ""},
		{"ztunnel no such SA", zt, id("shop", "ghost"), codes.PermissionDenied, "no running pod"},
		{"ztunnel node via bound pod", ztPodOnly, id("shop", "web"), codes.OK, ""},
		{"ztunnel node via bound pod, other node", ztPodOnly, id("shop", "db"), codes.PermissionDenied, "node-a"},
		{"ztunnel pod replaced", Caller{Username: zt.Username, Namespace: zt.Namespace, ServiceAccount: zt.ServiceAccount, PodName: "ztunnel-a", PodUID: "old"}, id("shop", "web"), codes.PermissionDenied, "replaced"},
		{"ztunnel pod gone", Caller{Username: zt.Username, Namespace: zt.Namespace, ServiceAccount: zt.ServiceAccount, PodName: "gone"}, id("shop", "web"), codes.PermissionDenied, "does not exist"},
		{"ztunnel pod unscheduled", Caller{Username: zt.Username, Namespace: zt.Namespace, ServiceAccount: zt.ServiceAccount, PodName: "ztunnel-unscheduled"}, id("shop", "web"), codes.PermissionDenied, "not scheduled"},
		{"ztunnel unbound token", Caller{Username: zt.Username, Namespace: zt.Namespace, ServiceAccount: zt.ServiceAccount}, id("shop", "web"), codes.PermissionDenied, "bound to its pod"},
		{"look-alike ztunnel in another namespace", Caller{Username: "system:serviceaccount:shop:ztunnel", Namespace: "shop", ServiceAccount: "ztunnel", NodeName: "node-a"}, id("shop", "web"), codes.PermissionDenied, "its own identity"},
	}
	for _, tc := range cases {
		err := a.Authorize(t.Context(), tc.caller, mustID(t, tc.id))
		if status.Code(err) != tc.code || (tc.msg != "" && !strings.Contains(err.Error(), tc.msg)) {
			t.Errorf("%s: %v, want %v mentioning %q", tc.name, err, tc.code, tc.msg)
		}
	}

	broken := &Authorizer{ZtunnelNamespace: "ambit-system", ZtunnelName: "ztunnel", Pods: &podStore{err: errors.New("apiserver down")}}
	if err := broken.Authorize(t.Context(), zt, mustID(t, id("shop", "web"))); status.Code(err) != codes.Unavailable {
		t.Errorf("pods unreadable: %v, want Unavailable", err)
	}
	if err := broken.Authorize(t.Context(), web, mustID(t, id("shop", "web"))); err != nil {
		t.Errorf("own identity needs no pod lookup: %v", err)
	}
}
