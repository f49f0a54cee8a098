package filter

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
)

// Fault is Ambit's FaultInjection filter, compiled.
type Fault struct {
	// Delay added to DelayPercent of the requests; 0 disables delays.
	Delay        time.Duration
	DelayPercent float64
	// AbortHTTP (200-599) or AbortGRPC (1-16) answers AbortPercent of the
	// requests at once; both 0 disables aborts.
	AbortHTTP    int
	AbortGRPC    int
	AbortPercent float64
}

func compileFault(in *configv1alpha1.Fault) (*Fault, error) {
	f := &Fault{DelayPercent: in.GetDelayPercent(), AbortHTTP: int(in.GetAbortHttpStatus()),
		AbortGRPC: int(in.GetAbortGrpcStatus()), AbortPercent: in.GetAbortPercent()}
	if in.GetDelay() != nil {
		d, err := duration(in.GetDelay())
		if err != nil {
			return nil, fmt.Errorf("delay: %w", err)
		}
		f.Delay = d
	}
	switch {
	case f.DelayPercent < 0 || f.DelayPercent > 100 || f.AbortPercent < 0 || f.AbortPercent > 100:
		return nil, fmt.Errorf("percentages must be within 0-100")
	case f.AbortHTTP != 0 && f.AbortGRPC != 0:
		return nil, fmt.Errorf("set at most one of abort http and grpc status")
	case f.AbortHTTP != 0 && (f.AbortHTTP < 200 || f.AbortHTTP > 599):
		return nil, fmt.Errorf("abort http status %d is not within 200-599", f.AbortHTTP)
	case f.AbortGRPC < 0 || f.AbortGRPC > 16:
		return nil, fmt.Errorf("abort grpc status %d is not within 1-16", f.AbortGRPC)
	}
	return f, nil
}

// FaultDecision is what a fault does to one request.
type FaultDecision struct {
	// Delay before the request goes on; 0 for none.
	Delay time.Duration
	// Abort answers the request at once (after the delay) when true.
	Abort bool
}

// Decide draws, independently, whether this request is delayed and whether
// it is aborted. draw returns uniform numbers in [0, 1); nil is
// math/rand/v2.Float64. A nil fault decides nothing.
func (f *Fault) Decide(draw func() float64) FaultDecision {
	var d FaultDecision
	if f == nil {
		return d
	}
	if f.Delay > 0 && Hit(f.DelayPercent, draw) {
		d.Delay = f.Delay
	}
	if (f.AbortHTTP != 0 || f.AbortGRPC != 0) && Hit(f.AbortPercent, draw) {
		d.Abort = true
	}
	return d
}

// WriteAbort answers an aborted request: the HTTP status, or for a gRPC
// abort a trailers-only gRPC answer (HTTP 200, grpc-status in the headers).
// It returns the HTTP status written.
func (f *Fault) WriteAbort(w http.ResponseWriter) int {
	if f.AbortGRPC != 0 {
		h := w.Header()
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(f.AbortGRPC))
		h.Set("Grpc-Message", "fault filter abort")
		w.WriteHeader(http.StatusOK)
		return http.StatusOK
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(f.AbortHTTP)
	_, _ = w.Write([]byte("fault filter abort\n"))
	return f.AbortHTTP
}
