package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/controller/metrics"
	"github.com/ambit-mesh/ambit/controller/translate"
)

// TranslateFunc is the signature of translate.Translate.
type TranslateFunc func(translate.Input, translate.Options) translate.Output

// Publisher receives every successfully translated Output; the xDS server
// (*xdsserver.Server) is one.
type Publisher interface {
	Publish(out *translate.Output)
}

// ErrTranslatePanic reports that the translate function panicked; the
// previous Output stays published.
var ErrTranslatePanic = errors.New("translation panicked")

// Metrics (controller/metrics): ambit_controller_translations_total and
// ambit_controller_translate_duration_seconds.
var (
	translations     = metrics.Translations
	translateSeconds = metrics.TranslateSeconds
)

// Pipeline translates and publishes. Create it with New; Run is safe for
// concurrent use, though callers normally run it from one goroutine.
type Pipeline struct {
	translate TranslateFunc
	opts      translate.Options
	pub       Publisher
	log       *slog.Logger

	mu     sync.Mutex // serializes Run so outputs are published in order
	last   atomic.Pointer[translate.Output]
	panics atomic.Int64
}

// New returns a Pipeline that runs fn with opts and publishes to pub. fn and
// pub are required; a nil logger means slog.Default().
func New(fn TranslateFunc, opts translate.Options, pub Publisher, logger *slog.Logger) *Pipeline {
	if logger == nil {
		logger = slog.Default()
	}
	return &Pipeline{translate: fn, opts: opts, pub: pub, log: logger}
}

// Run translates in and publishes the Output, which it also returns. If the
// translate function panics, Run logs the panic with its stack, counts it,
// publishes nothing (clients keep the last good configuration) and returns an
// error wrapping ErrTranslatePanic.
func (p *Pipeline) Run(ctx context.Context, in translate.Input) (*translate.Output, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := time.Now()
	out, err := p.safeTranslate(ctx, in)
	translateSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		translations.WithLabelValues(metrics.ResultPanic).Inc()
		p.panics.Add(1)
		return nil, err
	}
	translations.WithLabelValues(metrics.ResultOK).Inc()
	p.last.Store(out)
	p.pub.Publish(out)
	return out, nil
}

func (p *Pipeline) safeTranslate(ctx context.Context, in translate.Input) (out *translate.Output, err error) {
	defer func() {
		if r := recover(); r != nil {
			p.log.ErrorContext(ctx, "translation panicked; keeping the last good configuration",
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			out, err = nil, fmt.Errorf("%w: %v", ErrTranslatePanic, r)
		}
	}()
	o := p.translate(in, p.opts)
	return &o, nil
}

// Last returns the last Output published, or nil before the first.
func (p *Pipeline) Last() *translate.Output { return p.last.Load() }

// Panics returns how many translations panicked.
func (p *Pipeline) Panics() int64 { return p.panics.Load() }
