package status

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controller/translate"
)

// Conditions returns existing with desired merged in: each desired condition
// gets observedGeneration generation and keeps the existing
// lastTransitionTime if its status is unchanged (otherwise now); conditions
// of types absent from desired are dropped. existing is not modified.
func Conditions(existing, desired []metav1.Condition, generation int64, now metav1.Time) []metav1.Condition {
	out := make([]metav1.Condition, 0, len(desired))
	for _, c := range existing {
		if meta.FindStatusCondition(desired, c.Type) != nil {
			out = append(out, c)
		}
	}
	for _, d := range desired {
		d.ObservedGeneration = generation
		d.LastTransitionTime = now
		meta.SetStatusCondition(&out, d)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Gateway merges desired into existing: conditions as in Conditions,
// listeners matched by name (their conditions merged the same way), and
// addresses replaced.
func Gateway(existing, desired gwapiv1.GatewayStatus, generation int64, now metav1.Time) gwapiv1.GatewayStatus {
	out := gwapiv1.GatewayStatus{
		Addresses:  defaultAddresses(desired.Addresses),
		Conditions: Conditions(existing.Conditions, desired.Conditions, generation, now),
	}
	for _, l := range desired.Listeners {
		var prev []metav1.Condition
		for _, e := range existing.Listeners {
			if e.Name == l.Name {
				prev = e.Conditions
				break
			}
		}
		l = *l.DeepCopy()
		l.Conditions = Conditions(prev, l.Conditions, generation, now)
		if l.Conditions == nil {
			l.Conditions = []metav1.Condition{}
		}
		for i := range l.SupportedKinds {
			if l.SupportedKinds[i].Group == nil {
				g := gwapiv1.Group(gwapiv1.GroupName)
				l.SupportedKinds[i].Group = &g
			}
		}
		out.Listeners = append(out.Listeners, l)
	}
	return out
}

func defaultAddresses(in []gwapiv1.GatewayStatusAddress) []gwapiv1.GatewayStatusAddress {
	if len(in) == 0 {
		return nil
	}
	out := make([]gwapiv1.GatewayStatusAddress, len(in))
	for i, a := range in {
		out[i] = *a.DeepCopy()
		if out[i].Type == nil {
			t := gwapiv1.IPAddressType
			out[i].Type = &t
		}
	}
	return out
}

// RouteParents merges desired (Ambit's entries, controllerName
// translate.ControllerName) into a route's existing parent statuses. Entries
// of other controllers are kept, in their order, first; then Ambit's in the
// order of desired, each merging the conditions of the existing Ambit entry
// for the same parentRef. Ambit entries absent from desired are dropped.
func RouteParents(existing, desired []gwapiv1.RouteParentStatus, generation int64, now metav1.Time) []gwapiv1.RouteParentStatus {
	var out []gwapiv1.RouteParentStatus
	var ours []gwapiv1.RouteParentStatus
	for _, e := range existing {
		if e.ControllerName == translate.ControllerName {
			ours = append(ours, e)
		} else {
			out = append(out, *e.DeepCopy())
		}
	}
	for _, d := range desired {
		d = *d.DeepCopy()
		d.ControllerName = translate.ControllerName
		d.ParentRef = defaultParentRef(d.ParentRef)
		var prev []metav1.Condition
		for _, e := range ours {
			if sameParent(e.ParentRef, d.ParentRef) {
				prev = e.Conditions
				break
			}
		}
		d.Conditions = Conditions(prev, d.Conditions, generation, now)
		out = append(out, d)
	}
	if out == nil {
		return []gwapiv1.RouteParentStatus{}
	}
	return out
}

func defaultParentRef(r gwapiv1.ParentReference) gwapiv1.ParentReference {
	if r.Group == nil {
		g := gwapiv1.Group(gwapiv1.GroupName)
		r.Group = &g
	}
	if r.Kind == nil {
		k := gwapiv1.Kind("Gateway")
		r.Kind = &k
	}
	return r
}

func sameParent(a, b gwapiv1.ParentReference) bool {
	a, b = defaultParentRef(a), defaultParentRef(b)
	return *a.Group == *b.Group && *a.Kind == *b.Kind && a.Name == b.Name &&
		deref(a.Namespace) == deref(b.Namespace) && deref(a.SectionName) == deref(b.SectionName) &&
		deref(a.Port) == deref(b.Port)
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
