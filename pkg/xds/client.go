package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
)

// Handler receives the complete current set of resources of one type, by
// name, each time it changes (and once at start from the on-disk copy). It
// returns an error to reject the set: the client then NACKs the update and
// keeps the previous set as the last good state. Handlers run one at a time
// on the client's goroutine and must not retain the map.
type Handler func(resources map[string]*anypb.Any) error

// Type is one subscribed resource type.
type Type struct {
	// URL is the resource type URL, e.g. "type.googleapis.com/ambit.config.v1alpha1.Workload".
	URL string
	// Handle applies the type's resources. Required.
	Handle Handler
}

// Config configures a Client.
type Config struct {
	// Conn reaches the controller's ADS server. Required. gRPC reconnects the
	// channel; the client re-opens the stream on it.
	Conn grpc.ClientConnInterface
	// Node identifies this data plane to the controller (ID, metadata). Required.
	Node *corev3.Node
	// Types are the subscribed resource types, in the order their initial
	// requests are sent. At least one.
	Types []Type
	// StateFile is where the last good state is persisted (atomically, after
	// every accepted update) and read at start. Empty disables persistence.
	StateFile string
	// MinBackoff and MaxBackoff bound the delay before re-opening a broken
	// stream (exponential, full jitter). Zero means 100ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Client is an xDS delta ADS client. Create it with New and run it with Run.
type Client struct {
	cfg     Config
	log     *slog.Logger
	handler map[string]Handler

	mu     sync.Mutex
	state  map[string]map[string]resource // type URL -> name -> resource
	status Status
	synced map[string]bool
	ready  chan struct{} // closed when every type has been applied once
}

// resource is one accepted resource and its version.
type resource struct {
	version string
	body    *anypb.Any
}

// Status is the client's connection state, for readiness and the admin dump.
type Status struct {
	// Connected is true while a stream is open and has received a response.
	Connected bool `json:"connected"`
	// FromDisk is true if the state in use was loaded from StateFile and not
	// yet replaced by the controller.
	FromDisk bool `json:"fromDisk"`
	// LastError is the last stream or handler error, if any.
	LastError string `json:"lastError,omitempty"`
	// Resources counts accepted resources by type URL.
	Resources map[string]int `json:"resources"`
	// Acks and Nacks count the responses accepted and rejected.
	Acks  int `json:"acks"`
	Nacks int `json:"nacks"`
}

// New validates cfg and returns a client.
func New(cfg Config) (*Client, error) {
	if cfg.Conn == nil {
		return nil, errors.New("xds: Config.Conn is required")
	}
	if cfg.Node == nil || cfg.Node.GetId() == "" {
		return nil, errors.New("xds: Config.Node with an ID is required")
	}
	if len(cfg.Types) == 0 {
		return nil, errors.New("xds: at least one resource type is required")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	c := &Client{
		cfg:     cfg,
		log:     cfg.Logger,
		handler: map[string]Handler{},
		state:   map[string]map[string]resource{},
		synced:  map[string]bool{},
		ready:   make(chan struct{}),
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	for _, t := range cfg.Types {
		if t.URL == "" || t.Handle == nil {
			return nil, errors.New("xds: every Type needs a URL and a Handle")
		}
		if _, dup := c.handler[t.URL]; dup {
			return nil, fmt.Errorf("xds: type %s listed twice", t.URL)
		}
		c.handler[t.URL] = t.Handle
		c.state[t.URL] = map[string]resource{}
	}
	return c, nil
}

// Ready is closed once every type has been applied, from disk or from the
// controller.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Status returns a copy of the client's status.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Resources = map[string]int{}
	for t, rs := range c.state {
		s.Resources[t] = len(rs)
	}
	return s
}

// Resources returns the accepted resources of a type.
func (c *Client) Resources(typeURL string) map[string]*anypb.Any {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]*anypb.Any{}
	for n, r := range c.state[typeURL] {
		out[n] = r.body
	}
	return out
}

// Run loads the persisted state (if any) into the handlers, then keeps a
// stream to the controller open until ctx ends. It returns ctx's error.
func (c *Client) Run(ctx context.Context) error {
	c.loadFromDisk()
	attempt := 0
	for {
		start := time.Now()
		received, err := c.stream(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.mu.Lock()
		c.status.Connected = false
		if err != nil {
			c.status.LastError = err.Error()
		}
		c.mu.Unlock()
		// A stream that worked for a while starts the backoff over.
		if received && time.Since(start) > c.cfg.MaxBackoff {
			attempt = 0
		}
		delay := c.backoff(attempt)
		attempt++
		c.log.Warn("xds stream ended; reconnecting", "err", err, "delay", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

// backoff returns a random delay in [0, min(max, min*2^attempt)].
func (c *Client) backoff(attempt int) time.Duration {
	ceil := c.cfg.MinBackoff
	for i := 0; i < attempt && ceil < c.cfg.MaxBackoff; i++ {
		ceil *= 2
	}
	ceil = min(ceil, c.cfg.MaxBackoff)
	return rand.N(ceil + 1)
}

var adsMethod = "/" + discoveryv3.AggregatedDiscoveryService_ServiceDesc.ServiceName + "/DeltaAggregatedResources"

// stream runs one ADS stream. It reports whether any response arrived.
func (c *Client) stream(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	desc := &grpc.StreamDesc{StreamName: "DeltaAggregatedResources", ServerStreams: true, ClientStreams: true}
	s, err := c.cfg.Conn.NewStream(ctx, desc, adsMethod)
	if err != nil {
		return false, fmt.Errorf("open ADS stream: %w", err)
	}
	for i, t := range c.cfg.Types {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL, InitialResourceVersions: c.versions(t.URL)}
		if i == 0 {
			req.Node = c.cfg.Node
		}
		if err := s.SendMsg(req); err != nil {
			return false, fmt.Errorf("subscribe %s: %w", t.URL, err)
		}
	}
	received := false
	for {
		resp := new(discoveryv3.DeltaDiscoveryResponse)
		if err := s.RecvMsg(resp); err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("server closed the stream")
			}
			return received, err
		}
		received = true
		c.mu.Lock()
		c.status.Connected = true
		c.mu.Unlock()
		ack := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		if err := c.apply(resp); err != nil {
			c.log.Error("rejected xds update", "type", resp.GetTypeUrl(), "nonce", resp.GetNonce(), "err", err)
			c.mu.Lock()
			c.status.LastError = fmt.Sprintf("rejected %s: %v", resp.GetTypeUrl(), err)
			c.mu.Unlock()
			ack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		}
		if err := s.SendMsg(ack); err != nil {
			return received, fmt.Errorf("send ACK: %w", err)
		}
	}
}

// versions returns the accepted versions of a type, sent on (re)subscription
// so that the server sends only what changed.
func (c *Client) versions(typeURL string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := map[string]string{}
	for n, r := range c.state[typeURL] {
		v[n] = r.version
	}
	return v
}

// apply merges a delta into a copy of the type's state, hands it to the
// handler, and commits and persists it if the handler accepts it.
func (c *Client) apply(resp *discoveryv3.DeltaDiscoveryResponse) error {
	h, ok := c.handler[resp.GetTypeUrl()]
	if !ok {
		c.countAck(false)
		return fmt.Errorf("unsubscribed type %q", resp.GetTypeUrl())
	}
	c.mu.Lock()
	next := make(map[string]resource, len(c.state[resp.GetTypeUrl()]))
	for n, r := range c.state[resp.GetTypeUrl()] {
		next[n] = r
	}
	c.mu.Unlock()
	for _, r := range resp.GetResources() {
		if r.GetName() == "" || r.GetResource() == nil {
			c.countAck(false)
			return fmt.Errorf("resource without name or body in %s", resp.GetTypeUrl())
		}
		if r.GetResource().GetTypeUrl() != resp.GetTypeUrl() {
			c.countAck(false)
			return fmt.Errorf("resource %s has type %s in a %s response", r.GetName(), r.GetResource().GetTypeUrl(), resp.GetTypeUrl())
		}
		next[r.GetName()] = resource{version: r.GetVersion(), body: r.GetResource()}
	}
	for _, n := range resp.GetRemovedResources() {
		delete(next, n)
	}
	if err := h(bodies(next)); err != nil {
		c.countAck(false)
		return err
	}
	c.mu.Lock()
	c.state[resp.GetTypeUrl()] = next
	c.status.FromDisk = false
	c.status.Acks++
	c.markSyncedLocked(resp.GetTypeUrl())
	c.mu.Unlock()
	c.persist()
	return nil
}

func (c *Client) countAck(ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ok {
		c.status.Acks++
	} else {
		c.status.Nacks++
	}
}

func (c *Client) markSyncedLocked(typeURL string) {
	if c.synced[typeURL] {
		return
	}
	c.synced[typeURL] = true
	if len(c.synced) == len(c.handler) {
		close(c.ready)
	}
}

func bodies(rs map[string]resource) map[string]*anypb.Any {
	out := make(map[string]*anypb.Any, len(rs))
	for n, r := range rs {
		out[n] = r.body
	}
	return out
}
