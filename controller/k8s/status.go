package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	trafficv1alpha1 "github.com/ambit-mesh/ambit/apis/traffic/v1alpha1"

	"github.com/ambit-mesh/ambit/controller/status"
	"github.com/ambit-mesh/ambit/controller/translate"
)

// statusWriter applies translate.Status through the status subresource. It
// writes an object only when the merged status differs from what the object
// (as cached) carries; an update against a stale resourceVersion fails with a
// conflict and is retried by the next reconcile.
type statusWriter struct {
	client client.Client
	log    *slog.Logger
	// now stamps lastTransitionTime; nil means time.Now.
	now func() time.Time
}

func (w *statusWriter) write(ctx context.Context, in *translate.Input, st *translate.Status) error {
	nowFn := w.now
	if nowFn == nil {
		nowFn = time.Now
	}
	now := metav1.NewTime(nowFn().Truncate(time.Second))
	var errs []error
	update := func(obj client.Object) {
		if err := w.client.Status().Update(ctx, obj, client.FieldOwner(FieldManager)); err != nil {
			if !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("status of %T %s: %w", obj, client.ObjectKeyFromObject(obj), err))
			}
			return
		}
		w.log.DebugContext(ctx, "status written", "kind", fmt.Sprintf("%T", obj), "object", client.ObjectKeyFromObject(obj))
	}

	for i := range in.GatewayClasses {
		o := &in.GatewayClasses[i]
		desired, ok := st.GatewayClasses[o.Name]
		if !ok {
			continue
		}
		merged := status.Conditions(o.Status.Conditions, desired, o.Generation, now)
		if !equality.Semantic.DeepEqual(merged, o.Status.Conditions) {
			o = o.DeepCopy()
			o.Status.Conditions = merged
			update(o)
		}
	}
	for i := range in.Gateways {
		o := &in.Gateways[i]
		desired, ok := st.Gateways[key(o)]
		if !ok {
			continue
		}
		merged := status.Gateway(o.Status, desired, o.Generation, now)
		if !equality.Semantic.DeepEqual(merged, o.Status) {
			o = o.DeepCopy()
			o.Status = merged
			update(o)
		}
	}
	for i := range in.HTTPRoutes {
		o := &in.HTTPRoutes[i]
		desired, ok := st.HTTPRoutes[key(o)]
		if !ok && !hasOurParents(o.Status.Parents) {
			continue
		}
		merged := status.RouteParents(o.Status.Parents, desired, o.Generation, now)
		if !equality.Semantic.DeepEqual(merged, o.Status.Parents) {
			o = o.DeepCopy()
			o.Status.Parents = merged
			update(o)
		}
	}
	for i := range in.GRPCRoutes {
		o := &in.GRPCRoutes[i]
		desired, ok := st.GRPCRoutes[key(o)]
		if !ok && !hasOurParents(o.Status.Parents) {
			continue
		}
		merged := status.RouteParents(o.Status.Parents, desired, o.Generation, now)
		if !equality.Semantic.DeepEqual(merged, o.Status.Parents) {
			o = o.DeepCopy()
			o.Status.Parents = merged
			update(o)
		}
	}
	var policies []client.Object
	for i := range in.AuthorizationPolicies {
		policies = append(policies, &in.AuthorizationPolicies[i])
	}
	for i := range in.PeerAuthentications {
		policies = append(policies, &in.PeerAuthentications[i])
	}
	for i := range in.BackendPolicies {
		policies = append(policies, &in.BackendPolicies[i])
	}
	for i := range in.FaultInjections {
		policies = append(policies, &in.FaultInjections[i])
	}
	for _, o := range policies {
		kind, conds := policyConditions(o)
		desired, ok := st.Policies[translate.PolicyKey{Kind: kind, NamespacedName: key(o)}]
		if !ok {
			continue
		}
		merged := status.Conditions(*conds, desired, o.GetGeneration(), now)
		if !equality.Semantic.DeepEqual(merged, *conds) {
			o = o.DeepCopyObject().(client.Object)
			_, conds = policyConditions(o)
			*conds = merged
			update(o)
		}
	}
	return errors.Join(errs...)
}

func key(o client.Object) types.NamespacedName { return client.ObjectKeyFromObject(o) }

// policyConditions returns an Ambit policy's kind and conditions.
func policyConditions(o client.Object) (string, *[]metav1.Condition) {
	switch o := o.(type) {
	case *securityv1alpha1.AuthorizationPolicy:
		return "AuthorizationPolicy", &o.Status.Conditions
	case *securityv1alpha1.PeerAuthentication:
		return "PeerAuthentication", &o.Status.Conditions
	case *trafficv1alpha1.BackendPolicy:
		return "BackendPolicy", &o.Status.Conditions
	case *trafficv1alpha1.FaultInjection:
		return "FaultInjection", &o.Status.Conditions
	}
	panic(fmt.Sprintf("not an Ambit policy: %T", o))
}

// hasOurParents reports whether a route carries an entry of Ambit's; if
// translation no longer has one for it, the entry is removed.
func hasOurParents(parents []gwapiv1.RouteParentStatus) bool {
	for _, p := range parents {
		if p.ControllerName == translate.ControllerName {
			return true
		}
	}
	return false
}
