package status

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controller/translate"
)

var (
	t0 = metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	t1 = metav1.NewTime(t0.Add(time.Hour))
)

func cond(typ string, s metav1.ConditionStatus, reason string) metav1.Condition {
	return metav1.Condition{Type: typ, Status: s, Reason: reason, Message: reason}
}

func TestConditions(t *testing.T) {
	existing := []metav1.Condition{
		{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", ObservedGeneration: 1, LastTransitionTime: t0},
		{Type: "Programmed", Status: metav1.ConditionFalse, Reason: "Pending", ObservedGeneration: 1, LastTransitionTime: t0},
		{Type: "Stale", Status: metav1.ConditionTrue, Reason: "Old", ObservedGeneration: 1, LastTransitionTime: t0},
	}
	desired := []metav1.Condition{
		cond("Accepted", metav1.ConditionTrue, "Accepted"),     // same status: time kept
		cond("Programmed", metav1.ConditionTrue, "Programmed"), // changed: time moves
		cond("ResolvedRefs", metav1.ConditionTrue, "ResolvedRefs"),
	}
	got := Conditions(existing, desired, 2, t1)
	want := []metav1.Condition{
		{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", Message: "Accepted", ObservedGeneration: 2, LastTransitionTime: t0},
		{Type: "Programmed", Status: metav1.ConditionTrue, Reason: "Programmed", Message: "Programmed", ObservedGeneration: 2, LastTransitionTime: t1},
		{Type: "ResolvedRefs", Status: metav1.ConditionTrue, Reason: "ResolvedRefs", Message: "ResolvedRefs", ObservedGeneration: 2, LastTransitionTime: t1},
	}
	if !equality.Semantic.DeepEqual(got, want) {
		t.Fatalf("Conditions:\n got %+v\nwant %+v", got, want)
	}
	if existing[1].Status != metav1.ConditionFalse || len(existing) != 3 {
		t.Fatal("Conditions modified its input")
	}
	// Merging the same desired state again is a no-op, even later.
	if again := Conditions(got, desired, 2, metav1.NewTime(t1.Add(time.Hour))); !equality.Semantic.DeepEqual(again, got) {
		t.Fatalf("re-merge changed conditions:\n got %+v\nwant %+v", again, got)
	}
	if Conditions(existing, nil, 1, t1) != nil {
		t.Fatal("no desired conditions should clear them")
	}
}

func TestGateway(t *testing.T) {
	// What the CRD defaults on a new Gateway.
	existing := gwapiv1.GatewayStatus{Conditions: []metav1.Condition{
		{Type: "Accepted", Status: metav1.ConditionUnknown, Reason: "Pending", LastTransitionTime: metav1.NewTime(time.Unix(0, 0))},
		{Type: "Programmed", Status: metav1.ConditionUnknown, Reason: "Pending", LastTransitionTime: metav1.NewTime(time.Unix(0, 0))},
	}}
	desired := gwapiv1.GatewayStatus{
		Addresses:  []gwapiv1.GatewayStatusAddress{{Value: "10.0.0.7"}},
		Conditions: []metav1.Condition{cond("Accepted", metav1.ConditionTrue, "Accepted"), cond("Programmed", metav1.ConditionTrue, "Programmed")},
		Listeners: []gwapiv1.ListenerStatus{{
			Name:           "mesh",
			SupportedKinds: []gwapiv1.RouteGroupKind{{Kind: "HTTPRoute"}},
			Conditions:     []metav1.Condition{cond("Accepted", metav1.ConditionTrue, "Accepted")},
		}},
	}
	got := Gateway(existing, desired, 3, t1)
	if got.Conditions[0].LastTransitionTime != t1 || got.Conditions[0].ObservedGeneration != 3 {
		t.Errorf("Accepted condition not stamped: %+v", got.Conditions[0])
	}
	if got.Addresses[0].Type == nil || *got.Addresses[0].Type != gwapiv1.IPAddressType {
		t.Errorf("address type not defaulted: %+v", got.Addresses)
	}
	if g := got.Listeners[0].SupportedKinds[0].Group; g == nil || *g != gwapiv1.GroupName {
		t.Errorf("supported kind group not defaulted: %v", g)
	}
	if desired.Listeners[0].SupportedKinds[0].Group != nil || desired.Addresses[0].Type != nil {
		t.Error("Gateway modified desired")
	}
	if again := Gateway(got, desired, 3, metav1.NewTime(t1.Add(time.Minute))); !equality.Semantic.DeepEqual(again, got) {
		t.Errorf("re-merge changed the status:\n got %+v\nwant %+v", again, got)
	}
	got.Listeners[0].Conditions[0].LastTransitionTime = t0
	if again := Gateway(got, desired, 3, t1); again.Listeners[0].Conditions[0].LastTransitionTime != t0 {
		t.Errorf("listener condition time moved without a status change")
	}
}

func TestRouteParents(t *testing.T) {
	svc := gwapiv1.ParentReference{Group: ptr.To(gwapiv1.Group("")), Kind: ptr.To(gwapiv1.Kind("Service")), Name: "reviews"}
	gone := gwapiv1.ParentReference{Group: ptr.To(gwapiv1.Group("")), Kind: ptr.To(gwapiv1.Kind("Service")), Name: "gone"}
	gw := gwapiv1.ParentReference{Name: "waypoint"} // group and kind defaulted by the server
	serverGW := gwapiv1.ParentReference{Group: ptr.To(gwapiv1.Group(gwapiv1.GroupName)), Kind: ptr.To(gwapiv1.Kind("Gateway")), Name: "waypoint"}
	other := gwapiv1.RouteParentStatus{
		ParentRef:      gwapiv1.ParentReference{Name: "edge"},
		ControllerName: "example.com/other",
		Conditions:     []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", LastTransitionTime: t0}},
	}
	existing := []gwapiv1.RouteParentStatus{
		{ParentRef: svc, ControllerName: translate.ControllerName, Conditions: []metav1.Condition{
			{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", LastTransitionTime: t0, ObservedGeneration: 1},
			{Type: "ResolvedRefs", Status: metav1.ConditionFalse, Reason: "BackendNotFound", LastTransitionTime: t0, ObservedGeneration: 1},
		}},
		other,
		{ParentRef: gone, ControllerName: translate.ControllerName},
		{ParentRef: serverGW, ControllerName: translate.ControllerName, Conditions: []metav1.Condition{
			{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", LastTransitionTime: t0, ObservedGeneration: 1},
		}},
	}
	desired := []gwapiv1.RouteParentStatus{
		{ParentRef: svc, ControllerName: translate.ControllerName, Conditions: []metav1.Condition{
			cond("Accepted", metav1.ConditionTrue, "Accepted"), cond("ResolvedRefs", metav1.ConditionTrue, "ResolvedRefs"),
		}},
		{ParentRef: gw, ControllerName: translate.ControllerName, Conditions: []metav1.Condition{cond("Accepted", metav1.ConditionTrue, "Accepted")}},
	}
	got := RouteParents(existing, desired, 1, t1)
	if len(got) != 3 {
		t.Fatalf("got %d parents, want 3 (other controller's, svc, gateway): %+v", len(got), got)
	}
	if !equality.Semantic.DeepEqual(got[0], other) {
		t.Errorf("other controller's entry changed: %+v", got[0])
	}
	if got[1].ParentRef.Name != "reviews" || got[1].Conditions[0].LastTransitionTime != t0 || got[1].Conditions[1].LastTransitionTime != t1 {
		t.Errorf("service parent merged wrongly: %+v", got[1])
	}
	if !sameParent(got[2].ParentRef, serverGW) || *got[2].ParentRef.Kind != "Gateway" || got[2].Conditions[0].LastTransitionTime != t0 {
		t.Errorf("gateway parent merged wrongly: %+v", got[2])
	}
	if again := RouteParents(got, desired, 1, metav1.NewTime(t1.Add(time.Hour))); !equality.Semantic.DeepEqual(again, got) {
		t.Errorf("re-merge changed parents:\n got %+v\nwant %+v", again, got)
	}
	if rest := RouteParents(existing, nil, 1, t1); len(rest) != 1 || rest[0].ControllerName != "example.com/other" {
		t.Errorf("without desired entries only other controllers' remain, got %+v", rest)
	}
}
