package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ErrNotControlled reports an existing object with a waypoint child's name
// that its Gateway does not control; the Deployer leaves it alone.
var ErrNotControlled = errors.New("object exists and is not controlled by the Gateway")

// Deployer applies waypoint children and removes stale ones. Reads go
// through Client (normally the manager's cache-backed client), writes to the
// apiserver. Methods must not be called concurrently.
type Deployer struct {
	// Client reads and writes the children. Required.
	Client client.Client
	// Options of every rendered waypoint.
	Options Options
	// OnError, if set, is told about each Gateway whose children could not be
	// applied (for an Event on the Gateway).
	OnError func(gw *gwapiv1.Gateway, err error)
	// APIReader, if set, reads an object the cache does not have (the cache
	// may hold only labelled Deployments), so that an object of the same name
	// is never taken over. Normally the manager's APIReader.
	APIReader client.Reader
	// Logger; nil means slog.Default().
	Logger *slog.Logger

	mu      sync.Mutex
	applied map[objectKey]appliedState
}

type objectKey struct {
	gvk schema.GroupVersionKind
	types.NamespacedName
}

type appliedState struct {
	hash            string // of the applied configuration
	resourceVersion string // the server returned for it
}

// childKinds are the kinds a waypoint has, as empty lists to read into.
func childLists() []client.ObjectList {
	return []client.ObjectList{&corev1.ServiceAccountList{}, &corev1.ConfigMapList{}, &appsv1.DeploymentList{}, &corev1.ServiceList{}}
}

// Sync makes the children of every waypoint Gateway in gateways (the full
// list of Gateways) match their rendering, and deletes children whose
// Gateway is gone, was replaced, or is no longer a waypoint. It carries on
// past errors and returns them joined.
func (d *Deployer) Sync(ctx context.Context, gateways []gwapiv1.Gateway) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	log := d.Logger
	if log == nil {
		log = slog.Default()
	}
	if d.applied == nil {
		d.applied = map[objectKey]appliedState{}
	}
	var errs []error
	if err := d.ensureGatewayClass(ctx, log); err != nil {
		errs = append(errs, err)
	}
	optsErr := d.Options.Validate()
	wanted := map[types.UID]bool{}
	for i := range gateways {
		gw := &gateways[i]
		if !IsWaypoint(gw) {
			continue
		}
		wanted[gw.UID] = true
		err := optsErr
		if err == nil {
			err = d.applyGateway(ctx, gw, Render(gw, d.Options))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("waypoint %s/%s: %w", gw.Namespace, gw.Name, err))
			if d.OnError != nil {
				d.OnError(gw, err)
			}
		}
	}
	if err := d.deleteStale(ctx, log, wanted); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ensureGatewayClass creates the ambit-waypoint GatewayClass when there is
// none. An existing one is left as it is (its controllerName is immutable;
// translation reports a class with another controllerName as not Accepted).
func (d *Deployer) ensureGatewayClass(ctx context.Context, log *slog.Logger) error {
	gc := GatewayClass()
	live, err := d.get(ctx, gc)
	if err != nil {
		return fmt.Errorf("read GatewayClass %s: %w", gc.Name, err)
	}
	if live != nil {
		return nil
	}
	err = d.Client.Create(ctx, gc, client.FieldOwner(ManagedBy))
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create GatewayClass %s: %w", gc.Name, err)
	}
	log.InfoContext(ctx, "created GatewayClass", "name", gc.Name, "controllerName", gc.Spec.ControllerName)
	return nil
}

func (d *Deployer) applyGateway(ctx context.Context, gw *gwapiv1.Gateway, res Resources) error {
	var errs []error
	for _, obj := range []client.Object{res.ServiceAccount, res.RootConfigMap, res.Deployment, res.Service} {
		if err := d.apply(ctx, gw, obj); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d *Deployer) apply(ctx context.Context, gw *gwapiv1.Gateway, desired client.Object) error {
	gvk := desired.GetObjectKind().GroupVersionKind()
	key := objectKey{gvk: gvk, NamespacedName: client.ObjectKeyFromObject(desired)}
	u, hash, err := toApplyConfig(desired)
	if err != nil {
		return fmt.Errorf("%s %s: %w", gvk.Kind, key.NamespacedName, err)
	}
	live, err := d.get(ctx, desired)
	if err != nil {
		return fmt.Errorf("read %s %s: %w", gvk.Kind, key.NamespacedName, err)
	}
	if live != nil {
		if !metav1.IsControlledBy(live, gw) {
			return fmt.Errorf("%s %s: %w", gvk.Kind, key.NamespacedName, ErrNotControlled)
		}
		if prev, ok := d.applied[key]; ok && prev.hash == hash && prev.resourceVersion == live.GetResourceVersion() {
			return nil // unchanged since our last apply
		}
	}
	if err := d.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u),
		client.FieldOwner(ManagedBy), client.ForceOwnership); err != nil {
		delete(d.applied, key)
		return fmt.Errorf("apply %s %s: %w", gvk.Kind, key.NamespacedName, err)
	}
	d.applied[key] = appliedState{hash: hash, resourceVersion: u.GetResourceVersion()}
	return nil
}

// get returns the live object named like desired, or nil if there is none.
// It asks Client (the cache) first and, when that has none, APIReader: the
// cache may only hold objects carrying Ambit's labels, and an object without
// them must not be taken over.
func (d *Deployer) get(ctx context.Context, desired client.Object) (client.Object, error) {
	live := desired.DeepCopyObject().(client.Object)
	err := d.Client.Get(ctx, client.ObjectKeyFromObject(desired), live)
	if apierrors.IsNotFound(err) && d.APIReader != nil {
		err = d.APIReader.Get(ctx, client.ObjectKeyFromObject(desired), live)
	}
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return live, nil
}

// deleteStale deletes the children (objects labelled as managed by Ambit,
// with a Gateway name) whose controlling Gateway is not in wanted.
func (d *Deployer) deleteStale(ctx context.Context, log *slog.Logger, wanted map[types.UID]bool) error {
	var errs []error
	for _, list := range childLists() {
		if err := d.Client.List(ctx, list, client.MatchingLabels{LabelManagedBy: ManagedBy},
			client.HasLabels{LabelGatewayName}); err != nil {
			errs = append(errs, fmt.Errorf("list waypoint children: %w", err))
			continue
		}
		items, err := meta.ExtractList(list)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, item := range items {
			obj := item.(client.Object)
			owner := metav1.GetControllerOf(obj)
			if owner == nil || owner.Kind != "Gateway" || owner.APIVersion != gwapiv1.GroupVersion.String() || wanted[owner.UID] {
				continue
			}
			kind := fmt.Sprintf("%T", obj)
			err := d.Client.Delete(ctx, obj, client.Preconditions{UID: ptr.To(obj.GetUID())},
				client.PropagationPolicy(metav1.DeletePropagationBackground))
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete stale waypoint child %s/%s: %w", obj.GetNamespace(), obj.GetName(), err))
				continue
			}
			for k := range d.applied {
				if k.NamespacedName == client.ObjectKeyFromObject(obj) {
					delete(d.applied, k)
				}
			}
			log.InfoContext(ctx, "deleted waypoint child of a Gateway that is gone", "kind", kind,
				"namespace", obj.GetNamespace(), "name", obj.GetName(), "gateway", owner.Name)
		}
	}
	return errors.Join(errs...)
}

// toApplyConfig turns a rendered typed object into the unstructured apply
// configuration sent to the server, and a hash of it. Fields the typed
// encoding always writes and Ambit does not mean to own (creationTimestamp,
// status) are dropped.
func toApplyConfig(obj client.Object) (*unstructured.Unstructured, string, error) {
	data, err := json.Marshal(obj)
	if err != nil {
		return nil, "", err
	}
	m := map[string]any{}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, "", err
	}
	delete(m, "status")
	if md, ok := m["metadata"].(map[string]any); ok {
		delete(md, "creationTimestamp")
	}
	if spec, ok := m["spec"].(map[string]any); ok {
		if tmpl, ok := spec["template"].(map[string]any); ok {
			if md, ok := tmpl["metadata"].(map[string]any); ok {
				delete(md, "creationTimestamp")
			}
		}
	}
	data, err = json.Marshal(m) // map keys sorted: a stable hash
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(data)
	return &unstructured.Unstructured{Object: m}, hex.EncodeToString(sum[:]), nil
}
