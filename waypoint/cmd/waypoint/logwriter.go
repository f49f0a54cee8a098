package main

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// logWriter buffers log lines and writes them out together: when flushEvery
// has passed since the first buffered line, when the next line would not
// fit in max bytes, and on Flush. An unbuffered access log costs a write(2)
// per request. Each Write must be whole lines (slog handlers write one
// record per call), so that a flush never splits one.
type logWriter struct {
	w          io.Writer
	max        int
	flushEvery time.Duration

	mu      sync.Mutex
	buf     []byte
	timer   *time.Timer
	pending bool // the timer is armed
}

// newLogWriter returns a logWriter over w holding up to 32 KiB for at most
// flushEvery.
func newLogWriter(w io.Writer, flushEvery time.Duration) *logWriter {
	return &logWriter{w: w, max: 32 << 10, flushEvery: flushEvery}
}

func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf)+len(p) > l.max {
		if err := l.flushLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) >= l.max {
		return l.w.Write(p)
	}
	l.buf = append(l.buf, p...)
	if !l.pending {
		l.pending = true
		if l.timer == nil {
			l.timer = time.AfterFunc(l.flushEvery, func() { _ = l.Flush() })
		} else {
			l.timer.Reset(l.flushEvery)
		}
	}
	return len(p), nil
}

// Flush writes out the buffered lines.
func (l *logWriter) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.flushLocked()
}

func (l *logWriter) flushLocked() error {
	if l.pending {
		l.timer.Stop()
		l.pending = false
	}
	if len(l.buf) == 0 {
		return nil
	}
	_, err := l.w.Write(l.buf)
	l.buf = l.buf[:0]
	return err
}

// flushingHandler flushes its logWriter after each record at flushLevel
// or above, so that warnings and errors (the last lines before an exit)
// are never held back.
type flushingHandler struct {
	slog.Handler
	w          *logWriter
	flushLevel slog.Level
}

func (h *flushingHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= h.flushLevel {
		if ferr := h.w.Flush(); err == nil {
			err = ferr
		}
	}
	return err
}

func (h *flushingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &flushingHandler{Handler: h.Handler.WithAttrs(attrs), w: h.w, flushLevel: h.flushLevel}
}

func (h *flushingHandler) WithGroup(name string) slog.Handler {
	return &flushingHandler{Handler: h.Handler.WithGroup(name), w: h.w, flushLevel: h.flushLevel}
}
