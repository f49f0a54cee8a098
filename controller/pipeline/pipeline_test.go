package pipeline

import (
	"errors"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	configv1alpha1 "github.com/ambit-mesh/ambit/apis/config/v1alpha1"
	"github.com/ambit-mesh/ambit/controller/translate"
)

type recorder struct {
	mu   sync.Mutex
	outs []*translate.Output
}

func (r *recorder) Publish(out *translate.Output) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outs = append(r.outs, out)
}

// fakeTranslate makes one Workload per Namespace and panics on a Namespace
// named "boom".
func fakeTranslate(in translate.Input, _ translate.Options) translate.Output {
	var out translate.Output
	for _, ns := range in.Namespaces {
		if ns.Name == "boom" {
			panic("boom")
		}
		out.Workloads = append(out.Workloads, &configv1alpha1.Workload{Name: ns.Name})
	}
	return out
}

func namespaces(names ...string) translate.Input {
	var in translate.Input
	for _, n := range names {
		in.Namespaces = append(in.Namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	return in
}

func TestRunPublishesAndSurvivesPanics(t *testing.T) {
	rec := &recorder{}
	p := New(fakeTranslate, translate.Options{}, rec, nil)

	out, err := p.Run(t.Context(), namespaces("a", "b"))
	if err != nil || len(out.Workloads) != 2 {
		t.Fatalf("Run = %v, %v; want 2 workloads", out, err)
	}
	if _, err := p.Run(t.Context(), namespaces("a", "boom")); !errors.Is(err, ErrTranslatePanic) {
		t.Fatalf("Run with a panicking translation: err %v, want ErrTranslatePanic", err)
	}
	if p.Panics() != 1 {
		t.Errorf("Panics = %d, want 1", p.Panics())
	}
	if len(rec.outs) != 1 {
		t.Fatalf("published %d outputs, want 1 (a panic publishes nothing)", len(rec.outs))
	}
	if p.Last() != out {
		t.Errorf("Last is not the last good output")
	}
	out2, err := p.Run(t.Context(), namespaces("c"))
	if err != nil || len(out2.Workloads) != 1 || len(rec.outs) != 2 {
		t.Fatalf("Run after a panic = %v, %v; published %d", out2, err, len(rec.outs))
	}
}
