package ambitctl

import (
	"context"
	"flag"
	"fmt"
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/controller/translate"
)

// DefaultWaypointName is the name `waypoint apply` gives a waypoint.
const DefaultWaypointName = "waypoint"

// waypointListeners is the one listener a waypoint Gateway has.
func waypointListeners() []gwapiv1.Listener {
	return []gwapiv1.Listener{{
		Name:     "mesh",
		Port:     translate.WaypointListenerPort,
		Protocol: translate.WaypointListenerProtocol,
	}}
}

func waypointApplyFlags(fs *flag.FlagSet) func(context.Context, *cli, []string) error {
	name := fs.String("name", DefaultWaypointName, "the waypoint's name (its Gateway, Deployment and Service)")
	forTraffic := fs.String("for", "", "the traffic it handles: service (the default when unset), workload, all or none (label "+translate.LabelWaypointFor+")")
	enroll := fs.Bool("enroll-namespace", false, "also label the namespace "+translate.LabelUseWaypoint+"=NAME, so that its services' traffic goes through the waypoint")
	wait := fs.Bool("wait", false, "wait until the waypoint is programmed and a pod of it is available (with -enroll-namespace, the namespace is labelled after that)")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long -wait waits")
	return func(ctx context.Context, c *cli, args []string) error {
		if len(args) > 0 {
			return usageErrorf("waypoint apply takes no arguments (the name is -name)")
		}
		if errs := validation.IsDNS1123Label(*name); len(errs) > 0 {
			return usageErrorf("-name %q: %s", *name, strings.Join(errs, "; "))
		}
		switch *forTraffic {
		case "", translate.WaypointForService, translate.WaypointForWorkload, translate.WaypointForAll, translate.WaypointForNone:
		default:
			return usageErrorf("-for %q: want %s, %s, %s or %s", *forTraffic,
				translate.WaypointForService, translate.WaypointForWorkload, translate.WaypointForAll, translate.WaypointForNone)
		}
		ns := c.ns()
		var namespace corev1.Namespace
		if err := c.client.Get(ctx, types.NamespacedName{Name: ns}, &namespace); err != nil {
			return fmt.Errorf("namespace %s: %s", ns, reason(err))
		}
		key := types.NamespacedName{Namespace: ns, Name: *name}
		outcome, err := applyWaypoint(ctx, c, key, *forTraffic)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "waypoint %s %s\n", key, outcome)
		// With -wait the namespace is labelled only once the waypoint can
		// take its traffic.
		if *wait {
			if err := waitReady(ctx, c, key, *timeout); err != nil {
				return err
			}
		}
		if *enroll {
			if namespace.Labels[translate.LabelUseWaypoint] == *name {
				fmt.Fprintf(c.stdout, "namespace %s already uses waypoint %s\n", ns, *name)
				return nil
			}
			patch := client.MergeFrom(namespace.DeepCopy())
			if namespace.Labels == nil {
				namespace.Labels = map[string]string{}
			}
			namespace.Labels[translate.LabelUseWaypoint] = *name
			if err := c.client.Patch(ctx, &namespace, patch); err != nil {
				return fmt.Errorf("label namespace %s: %w", ns, err)
			}
			fmt.Fprintf(c.stdout, "namespace %s labelled %s=%s\n", ns, translate.LabelUseWaypoint, *name)
		}
		return nil
	}
}

// applyWaypoint creates the Gateway, or brings an existing waypoint
// Gateway to the listener and waypoint-for label asked for. It refuses a
// Gateway of another class.
func applyWaypoint(ctx context.Context, c *cli, key types.NamespacedName, forTraffic string) (string, error) {
	var gw gwapiv1.Gateway
	err := c.client.Get(ctx, key, &gw)
	if apierrors.IsNotFound(err) {
		gw = gwapiv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
			Spec: gwapiv1.GatewaySpec{
				GatewayClassName: translate.WaypointClassName,
				Listeners:        waypointListeners(),
			},
		}
		if forTraffic != "" {
			gw.Labels = map[string]string{translate.LabelWaypointFor: forTraffic}
		}
		if err := c.client.Create(ctx, &gw); err != nil {
			return "", fmt.Errorf("create Gateway %s: %w", key, err)
		}
		return "created", nil
	}
	if err != nil {
		return "", fmt.Errorf("gateway %s: %w", key, err)
	}
	if gw.Spec.GatewayClassName != translate.WaypointClassName {
		return "", fmt.Errorf("a Gateway %s exists with class %q: it is not a waypoint (class %s); choose another -name", key, gw.Spec.GatewayClassName, translate.WaypointClassName)
	}
	before := gw.DeepCopy()
	// The apiserver fills in defaults (allowedRoutes): a listener that
	// already is the waypoint's stays as it is.
	if l := gw.Spec.Listeners; len(l) != 1 || l[0].Name != "mesh" || l[0].Port != translate.WaypointListenerPort ||
		l[0].Protocol != translate.WaypointListenerProtocol || l[0].Hostname != nil || l[0].TLS != nil {
		gw.Spec.Listeners = waypointListeners()
	}
	gw.Spec.Addresses = nil
	if forTraffic != "" {
		if gw.Labels == nil {
			gw.Labels = map[string]string{}
		}
		gw.Labels[translate.LabelWaypointFor] = forTraffic
	}
	if reflect.DeepEqual(before.Spec, gw.Spec) && reflect.DeepEqual(before.Labels, gw.Labels) {
		return "unchanged", nil
	}
	if err := c.client.Patch(ctx, &gw, client.MergeFrom(before)); err != nil {
		return "", fmt.Errorf("update Gateway %s: %w", key, err)
	}
	return "updated", nil
}

// waitReady polls until the Gateway's Programmed condition is true for its
// current generation and its Deployment (the controller names it after the
// Gateway) has an available pod.
func waitReady(ctx context.Context, c *cli, key types.NamespacedName, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	last, isProgrammed := "not found", false
	for {
		if !isProgrammed {
			var gw gwapiv1.Gateway
			err := c.client.Get(ctx, key, &gw)
			switch {
			case err == nil:
				var why string
				if isProgrammed, why = programmed(&gw); isProgrammed {
					fmt.Fprintf(c.stdout, "waypoint %s programmed\n", key)
					last = "its Deployment not found"
				} else {
					last = "not programmed: " + why
				}
			case ctx.Err() == nil:
				last = err.Error()
			}
		}
		if isProgrammed {
			var d appsv1.Deployment
			err := c.client.Get(ctx, key, &d)
			switch {
			case err == nil && d.Status.ObservedGeneration >= d.Generation && d.Status.AvailableReplicas > 0:
				fmt.Fprintf(c.stdout, "waypoint %s ready: %d of %d pods available\n", key, d.Status.AvailableReplicas, d.Status.Replicas)
				return nil
			case err == nil:
				last = fmt.Sprintf("programmed, but no pod of its Deployment available yet (%d of %d)", d.Status.AvailableReplicas, d.Status.Replicas)
				if msg := deploymentMessage(&d); msg != "" {
					last += ": " + msg
				}
			case ctx.Err() == nil:
				last = "its Deployment: " + reason(err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waypoint %s not ready after %v: %s (kubectl -n %s describe gateway %s; kubectl -n %s get pods)", key, timeout, last, key.Namespace, key.Name, key.Namespace)
		case <-tick.C:
		}
	}
}

func waypointDeleteFlags(*flag.FlagSet) func(context.Context, *cli, []string) error {
	return func(ctx context.Context, c *cli, names []string) error {
		if len(names) == 0 {
			names = []string{DefaultWaypointName}
		}
		ns := c.ns()
		var failed []string
		for _, name := range names {
			key := types.NamespacedName{Namespace: ns, Name: name}
			if err := deleteWaypoint(ctx, c, key); err != nil {
				fmt.Fprintf(c.stderr, "ambitctl waypoint delete: %v\n", err)
				failed = append(failed, name)
				continue
			}
			fmt.Fprintf(c.stdout, "waypoint %s deleted\n", key)
			for _, user := range waypointUsers(ctx, c, key) {
				fmt.Fprintf(c.stdout, "  %s still names it (%s=%s): its traffic has no waypoint until the label is removed or the waypoint is back\n", user, translate.LabelUseWaypoint, name)
			}
		}
		if len(failed) > 0 {
			return fmt.Errorf("%d of %d not deleted: %s", len(failed), len(names), strings.Join(failed, ", "))
		}
		return nil
	}
}

func deleteWaypoint(ctx context.Context, c *cli, key types.NamespacedName) error {
	var gw gwapiv1.Gateway
	if err := c.client.Get(ctx, key, &gw); err != nil {
		return fmt.Errorf("waypoint %s: %s", key, reason(err))
	}
	if gw.Spec.GatewayClassName != translate.WaypointClassName {
		return fmt.Errorf("the Gateway %s has class %q: not a waypoint, left alone", key, gw.Spec.GatewayClassName)
	}
	if err := c.client.Delete(ctx, &gw, client.Preconditions{UID: &gw.UID}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete Gateway %s: %w", key, err)
	}
	return nil
}

// waypointUsers names the namespace and services whose
// ambit.dev/use-waypoint label names the waypoint key.
func waypointUsers(ctx context.Context, c *cli, key types.NamespacedName) []string {
	var users []string
	var ns corev1.Namespace
	if err := c.client.Get(ctx, types.NamespacedName{Name: key.Namespace}, &ns); err == nil && ns.Labels[translate.LabelUseWaypoint] == key.Name {
		users = append(users, "namespace "+key.Namespace)
	}
	var svcs corev1.ServiceList
	if err := c.client.List(ctx, &svcs, client.InNamespace(key.Namespace), client.MatchingLabels{translate.LabelUseWaypoint: key.Name}); err == nil {
		for _, s := range svcs.Items {
			users = append(users, "service "+s.Name)
		}
	}
	return users
}

func waypointListFlags(fs *flag.FlagSet) func(context.Context, *cli, []string) error {
	all := fs.Bool("A", false, "list waypoints of every namespace")
	return func(ctx context.Context, c *cli, args []string) error {
		if len(args) > 0 {
			return usageErrorf("waypoint list takes no arguments")
		}
		ns := c.ns()
		if *all {
			ns = ""
		}
		gws, err := waypointGateways(ctx, c, ns)
		if err != nil {
			return err
		}
		if len(gws) == 0 {
			where := "namespace " + ns
			if ns == "" {
				where = "any namespace"
			}
			fmt.Fprintf(c.stdout, "no waypoints in %s\n", where)
			return nil
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tFOR\tPROGRAMMED\tADDRESS\tUSED BY")
		for _, gw := range gws {
			forTraffic := gw.Labels[translate.LabelWaypointFor]
			if forTraffic == "" {
				forTraffic = translate.WaypointForService
			}
			state := "True"
			if ok, why := programmed(&gw); !ok {
				state = "False: " + why
			}
			var addrs []string
			for _, a := range gw.Status.Addresses {
				addrs = append(addrs, a.Value)
			}
			users := waypointUsers(ctx, c, types.NamespacedName{Namespace: gw.Namespace, Name: gw.Name})
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", gw.Namespace, gw.Name, forTraffic, state,
				dash(strings.Join(addrs, ",")), dash(strings.Join(users, ", ")))
		}
		return tw.Flush()
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
