package xdsserver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/metrics"
	"github.com/ambit-mesh/ambit/controller/translate"
)

// Subset keys: which slice of a resource type a client receives.
const (
	subsetAll     = "all"
	subsetZtunnel = "ztunnel"
	subsetNone    = "none"
	// a waypoint's subset is "waypoint:<namespace>/<gateway>"
)

// Server is an xDS delta ADS server of Ambit's resources. Create it with New,
// attach it to a gRPC server with Register, and feed it with Publish.
type Server struct {
	log *slog.Logger
	ads serverv3.Server
	// authorize, when set, decides whether a stream may subscribe as a
	// node (SetAuthorizer).
	authorize func(ctx context.Context, nodeID string) error

	mu        sync.Mutex
	caches    map[cacheKey]*cachev3.LinearCache
	published map[cacheKey]map[string]proto.Message // what each cache holds
	latest    *translate.Output
	// publishedAt is when the latest Publish call started.
	publishedAt time.Time
	streams     int

	// mmu guards the metrics state below; lock order: mu, then mmu.
	mmu sync.Mutex
	// changedAt is when the Publish that last changed a cache started.
	changedAt map[cacheKey]time.Time
	// byStream is the metrics state of each open stream.
	byStream map[int64]*streamState
}

// streamState is what the metrics need to know about one stream.
type streamState struct {
	// ctx is the stream's context (its authenticated caller).
	ctx context.Context
	// authorized is the node ID the authorizer admitted on this stream.
	authorized string
	// kind is the node kind ("" until a request names the node).
	kind string
	// nodeID is the node's ID, from its first request.
	nodeID string
	// responded records the types that have had a response.
	responded map[string]bool
	// pending maps the nonce of a push caused by a Publish to the time that
	// Publish started, until the client ACKs or NACKs it.
	pending map[string]time.Time
}

type cacheKey struct{ typeURL, subset string }

// New returns a server with nothing published: clients wait until Publish.
// A nil logger means slog.Default().
func New(logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{
		log:       logger,
		caches:    map[cacheKey]*cachev3.LinearCache{},
		published: map[cacheKey]map[string]proto.Message{},
		changedAt: map[cacheKey]time.Time{},
		byStream:  map[int64]*streamState{},
	}
	cb := serverv3.CallbackFuncs{
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			s.mu.Lock()
			s.streams++
			s.mu.Unlock()
			s.mmu.Lock()
			s.byStream[id] = &streamState{ctx: ctx, responded: map[string]bool{}, pending: map[string]time.Time{}}
			s.mmu.Unlock()
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, node *corev3.Node) {
			s.mu.Lock()
			s.streams--
			s.mu.Unlock()
			s.mmu.Lock()
			if st := s.byStream[id]; st != nil && st.kind != "" {
				metrics.XDSConnections.WithLabelValues(st.kind).Dec()
			}
			delete(s.byStream, id)
			s.mmu.Unlock()
			s.log.Debug("xds stream closed", "stream", id, "node", node.GetId())
		},
		StreamDeltaRequestFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			d := req.GetErrorDetail()
			if d != nil {
				s.log.Warn("xds client rejected configuration", "stream", id, "node", req.GetNode().GetId(),
					"type", req.GetTypeUrl(), "nonce", req.GetResponseNonce(), "err", d.GetMessage())
			}
			if err := s.authorizeRequest(id, req); err != nil {
				return err // ends the stream with err's status
			}
			s.onRequest(id, req, d != nil)
			return nil
		},
		StreamDeltaResponseFunc: s.onResponse,
	}
	s.ads = serverv3.NewServer(context.Background(), s, cb)
	return s
}

// SetAuthorizer makes every stream subject to authorize: each node ID a
// stream's requests name is passed to it once, with the stream's context,
// and an error ends the stream with that error (a gRPC status) before the
// subscription is served. Call it before serving; without it every stream
// is served.
func (s *Server) SetAuthorizer(authorize func(ctx context.Context, nodeID string) error) {
	s.authorize = authorize
}

// authorizeRequest applies the authorizer to the node a request names (a
// request without a node keeps the stream's node).
func (s *Server) authorizeRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	node := req.GetNode().GetId()
	if s.authorize == nil || req.GetNode() == nil {
		return nil
	}
	s.mmu.Lock()
	st := s.byStream[id]
	var ctx context.Context
	done := st == nil || (node != "" && st.authorized == node)
	if st != nil {
		ctx = st.ctx
	}
	s.mmu.Unlock()
	if done {
		return nil
	}
	if err := s.authorize(ctx, node); err != nil {
		return err
	}
	s.mmu.Lock()
	st.authorized = node
	s.mmu.Unlock()
	return nil
}

// ListenAndServe listens on addr and serves the aggregated discovery
// service there, with opts (for example TLS and authentication), until ctx
// ends.
func (s *Server) ListenAndServe(ctx context.Context, addr string, opts ...grpc.ServerOption) error {
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("xds listener: %w", err)
	}
	return s.Serve(ctx, lis, opts...)
}

// Serve serves the aggregated discovery service on lis, with opts, until
// ctx ends; it returns nil then.
func (s *Server) Serve(ctx context.Context, lis net.Listener, opts ...grpc.ServerOption) error {
	g := grpc.NewServer(opts...)
	s.Register(g)
	go func() {
		<-ctx.Done()
		// ADS streams never end by themselves: give in-flight pushes a
		// moment, then close the streams (clients reconnect elsewhere).
		t := time.AfterFunc(2*time.Second, g.Stop)
		g.GracefulStop()
		t.Stop()
	}()
	s.log.InfoContext(ctx, "xds serving", "address", lis.Addr().String(), "authenticated", s.authorize != nil)
	if err := g.Serve(lis); err != nil && ctx.Err() == nil {
		return fmt.Errorf("xds: %w", err)
	}
	return nil
}

// Register adds the aggregated discovery service to g.
func (s *Server) Register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s.ads)
}

// Streams returns the number of open xDS streams.
func (s *Server) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}

// Publish makes out the configuration every client sees. Only resources that
// differ from the previous Publish are sent. Safe for concurrent use; out must
// not be modified afterwards.
func (s *Server) Publish(out *translate.Output) {
	start := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latest = out
	s.publishedAt = start
	for key := range s.caches {
		s.syncLocked(key)
	}
	metrics.XDSPublishSeconds.Observe(time.Since(start).Seconds())
}

// cacheFor returns the cache of a type and subset, creating and filling it
// from the latest Output on first use.
func (s *Server) cacheFor(key cacheKey) *cachev3.LinearCache {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.caches[key]
	if !ok {
		c = cachev3.NewLinearCache(key.typeURL)
		s.caches[key] = c
		s.published[key] = map[string]proto.Message{}
		s.syncLocked(key)
	}
	return c
}

// syncLocked brings one cache to the latest Output, sending only changes.
func (s *Server) syncLocked(key cacheKey) {
	if s.latest == nil {
		return
	}
	want := subset(s.latest, key)
	have := s.published[key]
	changed := map[string]types.Resource{}
	var removed []string
	for name, m := range want {
		if old, ok := have[name]; !ok || !proto.Equal(old, m) {
			changed[name] = m
		}
	}
	for name := range have {
		if _, ok := want[name]; !ok {
			removed = append(removed, name)
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		return
	}
	if err := s.caches[key].UpdateResources(changed, removed); err != nil {
		s.log.Error("update xds cache", "type", key.typeURL, "subset", key.subset, "err", err)
		return
	}
	s.published[key] = want
	s.mmu.Lock()
	s.changedAt[key] = s.publishedAt
	s.mmu.Unlock()
}

// onRequest records a stream's node kind (from its first request) and the
// ACK or NACK of a push.
func (s *Server) onRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest, nack bool) {
	s.mmu.Lock()
	defer s.mmu.Unlock()
	st := s.byStream[id]
	if st == nil {
		return
	}
	if st.kind == "" && req.GetNode().GetId() != "" {
		st.nodeID = req.GetNode().GetId()
		kind, _, err := configv1alpha1.ParseNodeID(st.nodeID)
		if err != nil {
			kind = metrics.NodeKindInvalid
		}
		st.kind = kind
		metrics.XDSConnections.WithLabelValues(kind).Inc()
	}
	nonce := req.GetResponseNonce()
	if nonce == "" {
		return
	}
	if nack {
		metrics.XDSNacks.WithLabelValues(typeName(req.GetTypeUrl())).Inc()
	} else if at, ok := st.pending[nonce]; ok {
		metrics.XDSPushAckSeconds.Observe(time.Since(at).Seconds())
	}
	delete(st.pending, nonce)
}

// onResponse counts a push and, when it follows a Publish (not the first
// response of its type on the stream), remembers when that Publish started
// so the ACK can be timed.
func (s *Server) onResponse(id int64, req *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	typeURL := resp.GetTypeUrl()
	metrics.XDSPushes.WithLabelValues(typeName(typeURL)).Inc()
	s.mmu.Lock()
	defer s.mmu.Unlock()
	st := s.byStream[id]
	if st == nil {
		return
	}
	if !st.responded[typeURL] {
		st.responded[typeURL] = true
		return
	}
	nodeID := st.nodeID
	if nodeID == "" {
		nodeID = req.GetNode().GetId()
	}
	sub, err := subsetOf(nodeID, typeURL)
	if err != nil {
		return
	}
	if at, ok := s.changedAt[cacheKey{typeURL, sub}]; ok {
		st.pending[resp.GetNonce()] = at
	}
}

// typeName is the short name of a type URL ("Workload").
func typeName(typeURL string) string {
	return typeURL[strings.LastIndexByte(typeURL, '.')+1:]
}

// subset selects the resources of one cache from an Output.
func subset(out *translate.Output, key cacheKey) map[string]proto.Message {
	m := map[string]proto.Message{}
	switch key.typeURL {
	case configv1alpha1.TypeWorkload:
		for _, w := range out.Workloads {
			m[w.GetName()] = w
		}
	case configv1alpha1.TypeService:
		for _, svc := range out.Services {
			m[svc.GetName()] = svc
		}
	case configv1alpha1.TypeAuthorization:
		for _, a := range out.Authorizations {
			if authorizationFor(a, key.subset, out) {
				m[a.GetName()] = a
			}
		}
	case configv1alpha1.TypeWaypointConfig:
		for _, w := range out.Waypoints {
			if key.subset == "waypoint:"+w.GetName() {
				m[w.GetName()] = w
			}
		}
	}
	return m
}

// authorizationFor says whether a policy belongs to a client's subset.
func authorizationFor(a *configv1alpha1.Authorization, sub string, out *translate.Output) bool {
	switch a.GetScope() {
	case configv1alpha1.Authorization_SCOPE_WORKLOAD_SELECTOR, configv1alpha1.Authorization_SCOPE_NAMESPACE,
		configv1alpha1.Authorization_SCOPE_GLOBAL:
		return sub == subsetZtunnel
	case configv1alpha1.Authorization_SCOPE_WAYPOINT:
		for _, t := range a.GetTargets() {
			if sub == "waypoint:"+t {
				return true
			}
		}
	case configv1alpha1.Authorization_SCOPE_SERVICE:
		for _, svc := range out.Services {
			if svc.GetWaypoint() == nil || sub != "waypoint:"+svc.GetWaypoint().GetGateway() {
				continue
			}
			for _, t := range a.GetTargets() {
				if t == svc.GetName() {
					return true
				}
			}
		}
	}
	return false
}

// subsetOf maps a client's node ID and a type to its subset.
func subsetOf(nodeID, typeURL string) (string, error) {
	kind, name, err := configv1alpha1.ParseNodeID(nodeID)
	if err != nil {
		return "", err
	}
	switch typeURL {
	case configv1alpha1.TypeWorkload, configv1alpha1.TypeService:
		return subsetAll, nil
	case configv1alpha1.TypeAuthorization, configv1alpha1.TypeWaypointConfig:
		if kind == configv1alpha1.NodeKindWaypoint {
			return "waypoint:" + name, nil
		}
		if typeURL == configv1alpha1.TypeWaypointConfig {
			return subsetNone, nil
		}
		return subsetZtunnel, nil
	default:
		return "", fmt.Errorf("unknown resource type %q", typeURL)
	}
}

// CreateDeltaWatch implements cachev3.ConfigWatcher by delegating to the
// cache of the client's subset.
func (s *Server) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	subsetKey, err := subsetOf(req.GetNode().GetId(), req.GetTypeUrl())
	if err != nil {
		s.log.Warn("refusing xds subscription", "node", req.GetNode().GetId(), "type", req.GetTypeUrl(), "err", err)
		return nil, err
	}
	return s.cacheFor(cacheKey{req.GetTypeUrl(), subsetKey}).CreateDeltaWatch(req, sub, ch)
}

// CreateWatch implements cachev3.ConfigWatcher for state-of-the-world
// clients, which get the same subsets.
func (s *Server) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	subsetKey, err := subsetOf(req.GetNode().GetId(), req.GetTypeUrl())
	if err != nil {
		return nil, err
	}
	return s.cacheFor(cacheKey{req.GetTypeUrl(), subsetKey}).CreateWatch(req, sub, ch)
}

// Fetch implements cachev3.ConfigFetcher; REST polling is not supported.
func (s *Server) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, fmt.Errorf("xds fetch is not supported; use delta ADS")
}
