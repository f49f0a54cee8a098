package main

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the timer's goroutine.
type syncBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.b.Write(p)
}

func (s *syncBuffer) state() (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String(), s.writes
}

func TestLogWriterBatchesLines(t *testing.T) {
	var out syncBuffer
	lw := newLogWriter(&out, time.Hour)
	log := slog.New(&flushingHandler{Handler: slog.NewJSONHandler(lw, nil), w: lw, flushLevel: slog.LevelWarn})
	for i := range 100 {
		log.Info("request", "i", i)
	}
	if s, n := out.state(); n != 0 || s != "" {
		t.Fatalf("info lines written before a flush: %d writes, %q", n, s)
	}
	log.Warn("something broke")
	s, n := out.state()
	if n != 1 {
		t.Fatalf("a warning flushed in %d writes, want 1", n)
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) != 101 || !strings.Contains(lines[0], `"i":0`) || !strings.Contains(lines[100], "something broke") {
		t.Fatalf("got %d lines, first %q, last %q; want the 100 info lines in order, then the warning", len(lines), lines[0], lines[len(lines)-1])
	}
	if err := lw.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, n := out.state(); n != 1 {
		t.Fatalf("an empty flush wrote: %d writes", n)
	}
}

func TestLogWriterFlushesWhenFull(t *testing.T) {
	var out syncBuffer
	lw := newLogWriter(&out, time.Hour)
	lw.max = 100
	line := strings.Repeat("x", 39) + "\n"
	for range 5 { // 40, 80, then 120 > 100: flush the first two
		if _, err := lw.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if s, n := out.state(); n != 2 || s != strings.Repeat(line, 4) {
		t.Fatalf("%d writes of %d bytes, want 2 writes of 80", n, len(s))
	}
	big := strings.Repeat("y", 150) + "\n"
	if _, err := lw.Write([]byte(big)); err != nil {
		t.Fatal(err)
	}
	if s, _ := out.state(); s != strings.Repeat(line, 5)+big {
		t.Fatalf("a line larger than the buffer: got %q", s)
	}
}

func TestLogWriterFlushesAfterInterval(t *testing.T) {
	var out syncBuffer
	lw := newLogWriter(&out, 20*time.Millisecond)
	for round := 1; round <= 2; round++ {
		if _, err := lw.Write([]byte("line\n")); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			if s, _ := out.state(); s == strings.Repeat("line\n", round) {
				break
			}
			if time.Now().After(deadline) {
				s, _ := out.state()
				t.Fatalf("round %d: not flushed after 5s: %q", round, s)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func TestLogWriterConcurrentLinesStayWhole(t *testing.T) {
	var out syncBuffer
	lw := newLogWriter(&out, time.Millisecond)
	lw.max = 256
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for range 200 {
				_, _ = lw.Write([]byte(strings.Repeat(string(rune('a'+g)), 30) + "\n"))
			}
		})
	}
	wg.Wait()
	if err := lw.Flush(); err != nil {
		t.Fatal(err)
	}
	s, _ := out.state()
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) != 1600 {
		t.Fatalf("%d lines, want 1600", len(lines))
	}
	for _, l := range lines {
		if len(l) != 30 || strings.Count(l, l[:1]) != 30 {
			t.Fatalf("a torn line: %q", l)
		}
	}
}
