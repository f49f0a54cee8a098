package localmode

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/pipeline"
	"github.com/ambit-mesh/ambit/controller/translate"
)

// loadNamespaces stands in for translate.LoadInput: multi-document YAML of
// Namespaces and Services.
func loadNamespaces(data []byte) (translate.Input, error) {
	var in translate.Input
	for i, doc := range strings.Split(string(data), "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return in, fmt.Errorf("document %d: %w", i, err)
		}
		switch head.Kind {
		case "Namespace":
			var ns corev1.Namespace
			if err := yaml.UnmarshalStrict([]byte(doc), &ns); err != nil {
				return in, fmt.Errorf("document %d: %w", i, err)
			}
			in.Namespaces = append(in.Namespaces, ns)
		case "Service":
			var s corev1.Service
			if err := yaml.UnmarshalStrict([]byte(doc), &s); err != nil {
				return in, fmt.Errorf("document %d: %w", i, err)
			}
			in.Services = append(in.Services, s)
		default:
			return in, fmt.Errorf("document %d: unknown kind %q", i, head.Kind)
		}
	}
	return in, nil
}

func fakeTranslate(in translate.Input, _ translate.Options) translate.Output {
	var out translate.Output
	for _, ns := range in.Namespaces {
		out.Workloads = append(out.Workloads, &configv1alpha1.Workload{Name: ns.Name})
	}
	for _, s := range in.Services {
		out.Services = append(out.Services, &configv1alpha1.Service{Name: s.Name})
	}
	return out
}

type publisher struct {
	mu   sync.Mutex
	last *translate.Output
	n    int
}

func (p *publisher) Publish(out *translate.Output) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last, p.n = out, p.n+1
}

func (p *publisher) names() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last == nil {
		return nil
	}
	var names []string
	for _, w := range p.last.Workloads {
		names = append(names, w.Name)
	}
	return names
}

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	// Write then rename, as editors and ConfigMap mounts do.
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func ns(names ...string) string {
	var docs []string
	for _, n := range names {
		docs = append(docs, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+n+"\n")
	}
	return strings.Join(docs, "---\n")
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "b.yaml", ns("b1", "b2"))
	write(t, dir, "a.yml", ns("a1")+"---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: a1\n")
	write(t, dir, "notes.txt", "not yaml: [")
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := LoadDir(dir, loadNamespaces)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range in.Namespaces {
		got = append(got, n.Name)
	}
	if strings.Join(got, ",") != "a1,b1,b2" || len(in.Services) != 1 {
		t.Fatalf("namespaces %v, services %d; want a1,b1,b2 (files in name order) and 1", got, len(in.Services))
	}

	write(t, dir, "c.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [broken\n")
	_, err = LoadDir(dir, loadNamespaces)
	var fe *FileError
	if !errors.As(err, &fe) || fe.File != filepath.Join(dir, "c.yaml") || !strings.Contains(err.Error(), "c.yaml") {
		t.Fatalf("LoadDir with a broken file: %v; want a FileError naming c.yaml", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRunWatchesFolder(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "mesh.yaml", ns("one"))
	pub := &publisher{}
	var mu sync.Mutex
	var reloadErrs []error
	logs := &strings.Builder{}
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&logMu, logs}, nil))
	cfg := Config{
		Dir: dir, Load: loadNamespaces, Debounce: 50 * time.Millisecond, Logger: log,
		Pipeline: pipeline.New(fakeTranslate, translate.Options{}, pub, log),
		OnReload: func(err error) {
			mu.Lock()
			defer mu.Unlock()
			reloadErrs = append(reloadErrs, err)
		},
	}
	done := make(chan error, 1)
	ctx := t.Context()
	go func() { done <- Run(ctx, cfg) }()

	waitFor(t, "the initial load", func() bool { return strings.Join(pub.names(), ",") == "one" })

	write(t, dir, "more.yml", ns("two", "three"))
	waitFor(t, "a new file", func() bool { return strings.Join(pub.names(), ",") == "one,two,three" })

	// A broken file keeps the last good configuration and names the file.
	published := func() int { pub.mu.Lock(); defer pub.mu.Unlock(); return pub.n }
	before := published()
	write(t, dir, "more.yml", "kind: Namespace\nmetadata: {name: two}\n---\nkind: Bogus\n")
	waitFor(t, "the broken file's error", func() bool {
		mu.Lock()
		defer mu.Unlock()
		last := reloadErrs[len(reloadErrs)-1]
		return last != nil && strings.Contains(last.Error(), "more.yml")
	})
	if published() != before || strings.Join(pub.names(), ",") != "one,two,three" {
		t.Fatalf("a broken file changed the published configuration: %v", pub.names())
	}
	logMu.Lock()
	if !strings.Contains(logs.String(), "more.yml") {
		t.Errorf("log does not name the broken file:\n%s", logs.String())
	}
	logMu.Unlock()

	// Fixing it and removing a file are picked up.
	write(t, dir, "more.yml", ns("four"))
	waitFor(t, "the fixed file", func() bool { return strings.Join(pub.names(), ",") == "one,four" })
	if err := os.Remove(filepath.Join(dir, "mesh.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a removed file", func() bool { return strings.Join(pub.names(), ",") == "four" })
}

func TestRunDebounces(t *testing.T) {
	dir := t.TempDir()
	pub := &publisher{}
	var mu sync.Mutex
	reloads := 0
	cfg := Config{
		Dir: dir, Load: loadNamespaces, Debounce: 300 * time.Millisecond,
		Pipeline: pipeline.New(fakeTranslate, translate.Options{}, pub, slog.New(slog.DiscardHandler)),
		Logger:   slog.New(slog.DiscardHandler),
		OnReload: func(error) { mu.Lock(); reloads++; mu.Unlock() },
	}
	go func() { _ = Run(t.Context(), cfg) }()
	waitFor(t, "the initial load", func() bool { mu.Lock(); defer mu.Unlock(); return reloads == 1 })
	for i := range 5 {
		write(t, dir, fmt.Sprintf("f%d.yaml", i), ns(fmt.Sprintf("n%d", i)))
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(t, "the burst's reload", func() bool { return len(pub.names()) == 5 })
	time.Sleep(400 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if reloads != 2 {
		t.Errorf("%d reloads for one burst of writes, want 2 (start + one)", reloads)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
