package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"

	securityv1alpha1 "github.com/ambit-mesh/ambit/apis/security/v1alpha1"
	trafficv1alpha1 "github.com/ambit-mesh/ambit/apis/traffic/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/deploy"
	"github.com/ambit-mesh/ambit/controller/pipeline"
	"github.com/ambit-mesh/ambit/controller/translate"
)

// Defaults of Options.
const (
	DefaultSystemNamespace  = "ambit-system"
	DefaultLeaderElectionID = "ambit-controller"
	// FieldManager is the field manager of every write (server-side apply
	// and status).
	FieldManager = deploy.ManagedBy
	// panicRetry is how soon a reconcile whose translation panicked runs again.
	panicRetry = 30 * time.Second
)

// Options configure a Controller.
type Options struct {
	// Pipeline translates and publishes. Required.
	Pipeline *pipeline.Pipeline
	// Waypoint configures the rendered waypoint Deployments.
	Waypoint deploy.Options
	// SystemNamespace holds the leader-election Lease; "" means ambit-system.
	SystemNamespace string
	// LeaderElection enables leader election; without it this replica writes
	// as if it were the leader.
	LeaderElection bool
	// LeaderElectionID names the Lease; "" means ambit-controller.
	LeaderElectionID string
	// LeaseDuration, RenewDeadline and RetryPeriod tune leader election;
	// zero means controller-runtime's defaults (15s, 10s, 2s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// MetricsAddress serves Prometheus metrics; "" or "0" disables.
	MetricsAddress string
	// HealthAddress serves /healthz and /readyz; "" or "0" disables.
	HealthAddress string
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Controller is the manager with Ambit's reconciler. Create it with New and
// run it with Start.
type Controller struct {
	mgr      manager.Manager
	log      *slog.Logger
	pipeline *pipeline.Pipeline
	deployer *deploy.Deployer
	status   *statusWriter
	events   events.EventRecorder
	elected  chan event.GenericEvent
}

// worldKey is the one key every event enqueues.
var worldKey = reconcile.Request{NamespacedName: types.NamespacedName{Name: "world"}}

// New builds the manager, its caches and the reconciler for cfg's cluster.
func New(cfg *rest.Config, opts Options) (*Controller, error) {
	if opts.Pipeline == nil {
		return nil, errors.New("k8s: Options.Pipeline is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.SystemNamespace == "" {
		opts.SystemNamespace = DefaultSystemNamespace
	}
	if opts.LeaderElectionID == "" {
		opts.LeaderElectionID = DefaultLeaderElectionID
	}
	scheme, err := NewScheme()
	if err != nil {
		return nil, err
	}
	disabled := func(s string) string {
		if s == "" {
			return "0"
		}
		return s
	}
	mopts := manager.Options{
		Scheme: scheme,
		Logger: logr.FromSlogHandler(opts.Logger.Handler()),
		Cache: cache.Options{
			// The caches hold every Pod, Service and EndpointSlice of the
			// cluster; managedFields are the largest part nobody reads.
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				// Only the waypoint Deployments and root ConfigMaps, not
				// every Deployment and ConfigMap.
				&appsv1.Deployment{}: {Label: labels.SelectorFromSet(labels.Set{deploy.LabelManagedBy: deploy.ManagedBy})},
				&corev1.ConfigMap{}:  {Label: labels.SelectorFromSet(labels.Set{deploy.LabelManagedBy: deploy.ManagedBy})},
			},
		},
		Metrics:                       metricsserver.Options{BindAddress: disabled(opts.MetricsAddress)},
		HealthProbeBindAddress:        disabled(opts.HealthAddress),
		LeaderElection:                opts.LeaderElection,
		LeaderElectionID:              opts.LeaderElectionID,
		LeaderElectionNamespace:       opts.SystemNamespace,
		LeaderElectionReleaseOnCancel: true,
		Controller:                    ctrlConfig(),
	}
	if opts.LeaseDuration > 0 {
		mopts.LeaseDuration = ptr.To(opts.LeaseDuration)
	}
	if opts.RenewDeadline > 0 {
		mopts.RenewDeadline = ptr.To(opts.RenewDeadline)
	}
	if opts.RetryPeriod > 0 {
		mopts.RetryPeriod = ptr.To(opts.RetryPeriod)
	}
	mgr, err := ctrl.NewManager(cfg, mopts)
	if err != nil {
		return nil, fmt.Errorf("controller manager: %w", err)
	}
	c := &Controller{
		mgr:      mgr,
		log:      opts.Logger,
		pipeline: opts.Pipeline,
		events:   mgr.GetEventRecorder(FieldManager),
		elected:  make(chan event.GenericEvent, 1),
	}
	c.deployer = &deploy.Deployer{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Options: opts.Waypoint,
		Logger: opts.Logger.With("component", "deploy"),
		OnError: func(gw *gwapiv1.Gateway, err error) {
			c.events.Eventf(gw, nil, corev1.EventTypeWarning, "WaypointDeployFailed", "Deploy", "%v", err)
		},
	}
	c.status = &statusWriter{client: mgr.GetClient(), log: opts.Logger.With("component", "status")}
	if err := c.setup(); err != nil {
		return nil, err
	}
	return c, nil
}

// ctrlConfig lets several managers live in one process (tests).
func ctrlConfig() config.Controller {
	return config.Controller{SkipNameValidation: ptr.To(true)}
}

// watched are the kinds whose every change enqueues the world.
func watched() []client.Object {
	return []client.Object{
		&corev1.Namespace{}, &corev1.Pod{}, &corev1.Service{}, &discoveryv1.EndpointSlice{},
		&corev1.ServiceAccount{}, &gwapiv1.GatewayClass{}, &gwapiv1.Gateway{}, &gwapiv1.HTTPRoute{},
		&gwapiv1.GRPCRoute{}, &gwapiv1beta1.ReferenceGrant{},
		&securityv1alpha1.AuthorizationPolicy{}, &securityv1alpha1.PeerAuthentication{},
		&trafficv1alpha1.BackendPolicy{}, &trafficv1alpha1.FaultInjection{},
		// Waypoint children: a deleted or edited Deployment or root
		// ConfigMap is put back.
		&appsv1.Deployment{}, &corev1.ConfigMap{},
	}
}

func (c *Controller) setup() error {
	toWorld := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{worldKey}
	})
	b := ctrl.NewControllerManagedBy(c.mgr).
		Named("ambit").
		WithOptions(controller.Options{
			// Every replica translates and serves xDS; writes check
			// leadership themselves.
			NeedLeaderElection:      ptr.To(false),
			MaxConcurrentReconciles: 1,
		})
	for _, obj := range watched() {
		b = b.Watches(obj, toWorld)
	}
	b = b.WatchesRawSource(source.Channel(c.elected, toWorld))
	if err := b.Complete(reconcile.Func(c.Reconcile)); err != nil {
		return fmt.Errorf("reconciler: %w", err)
	}
	// Runs on the leader only: enqueue the world once leadership is won.
	if err := c.mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		c.log.InfoContext(ctx, "elected leader; writing status and waypoints")
		select {
		case c.elected <- event.GenericEvent{Object: &corev1.Namespace{}}:
		default:
		}
		<-ctx.Done()
		return nil
	})); err != nil {
		return err
	}
	if err := c.mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	return c.mgr.AddReadyzCheck("synced", func(*http.Request) error {
		if c.pipeline.Last() == nil {
			return errors.New("no configuration translated yet")
		}
		return nil
	})
}

// Start runs the manager until ctx ends.
func (c *Controller) Start(ctx context.Context) error { return c.mgr.Start(ctx) }

// Elected is closed when this replica is the leader (at once without leader
// election).
func (c *Controller) Elected() <-chan struct{} { return c.mgr.Elected() }

func (c *Controller) isLeader() bool {
	select {
	case <-c.mgr.Elected():
		return true
	default:
		return false
	}
}

// Reconcile translates the whole world and publishes it; on the leader it
// then applies waypoints and status. The request is always worldKey.
func (c *Controller) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	in, err := c.load(ctx)
	if err != nil {
		return reconcile.Result{}, err
	}
	out, err := c.pipeline.Run(ctx, in)
	if err != nil {
		// Logged and counted by the pipeline; the last good configuration
		// stays published. Try again later in case it was transient.
		return reconcile.Result{RequeueAfter: panicRetry}, nil
	}
	if !c.isLeader() {
		return reconcile.Result{}, nil
	}
	errs := []error{
		c.deployer.Sync(ctx, in.Gateways),
		c.status.write(ctx, &in, &out.Status),
	}
	if err := errors.Join(errs...); err != nil {
		c.log.InfoContext(ctx, "writes failed; retrying", "error", err)
		return reconcile.Result{}, err
	}
	return reconcile.Result{}, nil
}

// load lists every watched object from the caches.
func (c *Controller) load(ctx context.Context) (translate.Input, error) {
	var (
		in   translate.Input
		nss  corev1.NamespaceList
		pods corev1.PodList
		svcs corev1.ServiceList
		eps  discoveryv1.EndpointSliceList
		sas  corev1.ServiceAccountList
		gcs  gwapiv1.GatewayClassList
		gws  gwapiv1.GatewayList
		hrs  gwapiv1.HTTPRouteList
		grs  gwapiv1.GRPCRouteList
		rgs  gwapiv1beta1.ReferenceGrantList
		aps  securityv1alpha1.AuthorizationPolicyList
		pas  securityv1alpha1.PeerAuthenticationList
		bps  trafficv1alpha1.BackendPolicyList
		fis  trafficv1alpha1.FaultInjectionList
	)
	r := c.mgr.GetClient()
	for _, l := range []client.ObjectList{&nss, &pods, &svcs, &eps, &sas, &gcs, &gws, &hrs, &grs, &rgs, &aps, &pas, &bps, &fis} {
		if err := r.List(ctx, l); err != nil {
			return in, fmt.Errorf("list %T from the cache: %w", l, err)
		}
	}
	in = translate.Input{
		Namespaces: nss.Items, Pods: pods.Items, Services: svcs.Items, EndpointSlices: eps.Items,
		ServiceAccounts: sas.Items, GatewayClasses: gcs.Items, Gateways: gws.Items,
		HTTPRoutes: hrs.Items, GRPCRoutes: grs.Items, ReferenceGrants: rgs.Items,
		AuthorizationPolicies: aps.Items, PeerAuthentications: pas.Items,
		BackendPolicies: bps.Items, FaultInjections: fis.Items,
	}
	return in, nil
}
