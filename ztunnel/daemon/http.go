package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/xds"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/redirect"
)

// httpHandler returns the handler of one HTTP listener.
func (d *Daemon) httpHandler(name string) http.Handler {
	mux := http.NewServeMux()
	switch name {
	case "metrics":
		// Uncompressed: a gzip writer allocates about 1 MiB per scrape
		// (the deflate tables), which raised ztunnel's peak memory by as
		// much; the text is a few KiB to tens of KiB.
		prom := promhttp.HandlerFor(d.metrics.Registry, promhttp.HandlerOpts{DisableCompression: true})
		mux.Handle("GET /metrics", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			d.UpdateHealthMetrics()
			prom.ServeHTTP(w, r)
		}))
	case "ready":
		mux.HandleFunc("GET /healthz/ready", d.serveReady)
	case "admin":
		mux.HandleFunc("GET /config_dump", d.serveConfigDump)
		mux.HandleFunc("GET /healthz/ready", d.serveReady)
		// Go's profiles (goroutines, heap, CPU) for diagnosing a stuck or
		// busy ztunnel; the admin listener is on localhost only.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

func (d *Daemon) serveReady(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := d.Ready(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(err.Error() + "\n"))
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// UpdateHealthMetrics refreshes the gauges read from other components (xDS
// state, certificates); it runs before each scrape.
func (d *Daemon) UpdateHealthMetrics() {
	st := d.xds.Status()
	d.metrics.XDSConnected.Set(b2f(st.Connected))
	d.metrics.ConfigFromDisk.Set(b2f(st.FromDisk))
	valid, invalid := 0, 0
	for _, c := range d.certs.Snapshot().Identities {
		if c.Valid {
			valid++
		} else {
			invalid++
		}
	}
	d.metrics.Certificates.WithLabelValues("valid").Set(float64(valid))
	d.metrics.Certificates.WithLabelValues("invalid").Set(float64(invalid))
}

// updateGauges sets the pod gauges and the captured pods that readiness
// checks (so neither a scrape nor a probe waits for d.mu); called with d.mu
// held after every change.
func (d *Daemon) updateGauges() {
	var captured []capturedPod
	draining := 0
	for _, ps := range d.pods {
		if ps.proxy != nil {
			captured = append(captured, capturedPod{key: ps.pod.Key(), id: ps.id.String()})
		}
		if ps.draining > 0 {
			draining++
		}
	}
	d.metrics.DrainingPods.Set(float64(draining))
	d.captured.Store(&captured)
	d.metrics.EnrolledPods.Set(float64(len(captured)))
	d.metrics.ReportedPods.Set(float64(len(d.pods)))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ConfigDump is the admin /config_dump document.
type ConfigDump struct {
	Node           string                     `json:"node"`
	Ready          string                     `json:"ready"`
	XDS            XDSDump                    `json:"xds"`
	Workloads      map[string]json.RawMessage `json:"workloads"`
	Services       map[string]json.RawMessage `json:"services"`
	Authorizations map[string]json.RawMessage `json:"authorizations"`
	Pods           []PodDump                  `json:"pods"`
	Certificates   identity.ManagerSnapshot   `json:"certificates"`
	Generation     uint64                     `json:"configGeneration"`
}

// XDSDump is the xDS client's status in the dump.
type XDSDump struct {
	Connected bool           `json:"connected"`
	FromDisk  bool           `json:"fromDisk"`
	LastError string         `json:"lastError,omitempty"`
	Resources map[string]int `json:"resources"`
	Acks      int            `json:"acks"`
	Nacks     int            `json:"nacks"`
}

func xdsDump(st xds.Status) XDSDump {
	return XDSDump{Connected: st.Connected, FromDisk: st.FromDisk, LastError: st.LastError,
		Resources: st.Resources, Acks: st.Acks, Nacks: st.Nacks}
}

// PodDump is one reported pod in the dump.
type PodDump struct {
	Pod      enroll.Pod `json:"pod"`
	Captured bool       `json:"captured"`
	// State says why the pod is or is not captured: PodCaptured,
	// PodNotEnrolled, PodUnknown or PodFailed.
	State string `json:"state"`
	// Draining is true while connections of an earlier capture drain.
	Draining bool   `json:"draining,omitempty"`
	Identity string `json:"identity,omitempty"`
	// OriginalSource is true when ztunnel connects to the pod's
	// application from the client's address (false when off, or when the
	// kernel refused the rules it needs).
	OriginalSource bool              `json:"originalSource,omitempty"`
	Error          string            `json:"error,omitempty"`
	Rules          *redirect.Ruleset `json:"rules,omitempty"`
	// SOCKS5 are the pod's SOCKS5 listeners (in its namespace), if open.
	SOCKS5 []string `json:"socks5,omitempty"`
}

// PodDump.State values.
const (
	// PodCaptured: ztunnel serves the pod.
	PodCaptured = "captured"
	// PodNotEnrolled: its Workload says it is not in the mesh.
	PodNotEnrolled = "not-enrolled"
	// PodUnknown: the configuration does not know the pod (yet); it is
	// captured once its Workload arrives, if that says so.
	PodUnknown = "unknown"
	// PodFailed: its capture or release failed (Error says why); retried.
	PodFailed = "failed"
)

// Dump builds the admin config dump (no private keys).
func (d *Daemon) Dump(ctx context.Context) ConfigDump {
	snap := d.store.Snapshot()
	out := ConfigDump{
		Node:           d.cfg.NodeName,
		Ready:          "ready",
		XDS:            xdsDump(d.xds.Status()),
		Workloads:      map[string]json.RawMessage{},
		Services:       map[string]json.RawMessage{},
		Authorizations: map[string]json.RawMessage{},
		Certificates:   d.certs.Snapshot(),
		Generation:     snap.Generation,
	}
	if err := d.Ready(); err != nil {
		out.Ready = err.Error()
	}
	for n, w := range snap.Workloads {
		out.Workloads[n] = protoJSON(w.Proto)
	}
	for n, s := range snap.Services {
		out.Services[n] = protoJSON(s.Proto)
	}
	for n, a := range snap.Authorizations {
		out.Authorizations[n] = protoJSON(a)
	}
	d.mu.Lock()
	for _, ps := range d.pods {
		pd := PodDump{Pod: ps.pod, Captured: ps.proxy != nil, Draining: ps.draining > 0, Error: ps.lastErr}
		switch w := knownWorkload(snap, ps.pod); {
		case ps.lastErr != "":
			pd.State = PodFailed
		case ps.proxy != nil:
			pd.State = PodCaptured
		case w == nil:
			pd.State = PodUnknown
		default:
			pd.State = PodNotEnrolled
		}
		if ps.proxy != nil {
			pd.Identity = ps.id.String()
			pd.OriginalSource = ps.proxy.OriginalSource()
			if ps.socks != nil {
				pd.SOCKS5 = ps.socks.addrs()
			}
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if rs, err := redirect.Rules(rctx, ps.ns); err == nil {
				pd.Rules = rs
			}
			cancel()
		}
		out.Pods = append(out.Pods, pd)
	}
	d.mu.Unlock()
	sort.Slice(out.Pods, func(i, j int) bool { return out.Pods[i].Pod.Key() < out.Pods[j].Pod.Key() })
	return out
}

func (d *Daemon) serveConfigDump(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(d.Dump(r.Context()))
}

func protoJSON(m proto.Message) json.RawMessage {
	b, err := protojson.Marshal(m)
	if err != nil {
		return json.RawMessage(`null`)
	}
	return b
}
