package translate

import (
	"bytes"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.out.yaml")

// testOptions are the options of every golden case.
var testOptions = Options{TrustDomain: "example.org"}

func loadCase(t *testing.T, path string) Input {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	in, err := LoadInput(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return in
}

func TestGolden(t *testing.T) {
	cases, err := filepath.Glob("testdata/*.in.yaml")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, in := range cases {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		t.Run(name, func(t *testing.T) {
			out := Translate(loadCase(t, in), testOptions)
			got, err := MarshalOutput(out)
			if err != nil {
				t.Fatal(err)
			}
			golden := strings.TrimSuffix(in, ".in.yaml") + ".out.yaml"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./translate -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the output; run go test ./translate -update and review the diff.\ngot:\n%s", golden, got)
			}
		})
	}
}

func shuffle[T any](r *rand.Rand, s []T) {
	r.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
}

// TestDeterministic shuffles every input slice and expects the same bytes.
func TestDeterministic(t *testing.T) {
	cases, _ := filepath.Glob("testdata/*.in.yaml")
	r := rand.New(rand.NewPCG(1, 2))
	for _, path := range cases {
		in := loadCase(t, path)
		want, err := MarshalOutput(Translate(in, testOptions))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 20; i++ {
			in := loadCase(t, path)
			shuffle(r, in.Namespaces)
			shuffle(r, in.Pods)
			shuffle(r, in.Services)
			shuffle(r, in.EndpointSlices)
			shuffle(r, in.GatewayClasses)
			shuffle(r, in.Gateways)
			shuffle(r, in.HTTPRoutes)
			shuffle(r, in.GRPCRoutes)
			shuffle(r, in.ReferenceGrants)
			shuffle(r, in.AuthorizationPolicies)
			shuffle(r, in.PeerAuthentications)
			shuffle(r, in.BackendPolicies)
			shuffle(r, in.FaultInjections)
			got, err := MarshalOutput(Translate(in, testOptions))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s: output depends on input order", path)
			}
		}
	}
}

// TestIRValid checks that every golden case yields a valid IR.
func TestIRValid(t *testing.T) {
	cases, _ := filepath.Glob("testdata/*.in.yaml")
	for _, path := range cases {
		in := loadCase(t, path)
		mesh := buildMesh(in, testOptions)
		if err := mesh.Validate(); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
}

// TestTranslateDoesNotModifyInput runs Translate twice on one Input.
func TestTranslateDoesNotModifyInput(t *testing.T) {
	cases, _ := filepath.Glob("testdata/*.in.yaml")
	for _, path := range cases {
		in := loadCase(t, path)
		a, _ := MarshalOutput(Translate(in, testOptions))
		b, _ := MarshalOutput(Translate(in, testOptions))
		if !bytes.Equal(a, b) {
			t.Errorf("%s: second translation differs", path)
		}
	}
}
