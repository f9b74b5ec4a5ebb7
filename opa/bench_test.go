package opa_test

import (
	"encoding/json"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/opa"
	"github.com/open-policy-agent/opa/v1/ast"
)

// benchInputs are the decisions of every chat turn.
var benchInputs = []struct {
	name string
	in   agate.PolicyInput
}{
	{"conversation.send", send(alice, "acme", 1200, 100_000)},
	{"model.use", modelUse("openai/gpt-4.1-mini", []string{"anthropic/*", "openai/*"}, []string{"openai/o3*", "*-pro"}, 1200, 100_000)},
}

// BenchmarkDecideEmbedded is one decision with the prepared query (DESIGN §11: ≈ 35–75 µs).
func BenchmarkDecideEmbedded(b *testing.B) {
	e, err := opa.NewEmbedded(b.Context(), policyDir, discard())
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range benchInputs {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				d, err := e.Decide(b.Context(), bc.in)
				if err != nil || !d.Allow {
					b.Fatal(d, err)
				}
			}
		})
	}
}

// BenchmarkDecideEmbeddedParallel is the same under concurrent turns.
func BenchmarkDecideEmbeddedParallel(b *testing.B) {
	e, err := opa.NewEmbedded(b.Context(), policyDir, discard())
	if err != nil {
		b.Fatal(err)
	}
	in := benchInputs[1].in
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if d, err := e.Decide(b.Context(), in); err != nil || !d.Allow {
				b.Error(d, err)
				return
			}
		}
	})
}

// BenchmarkDecideRemote is one decision asked of OPA's own server over loopback HTTP, for
// comparison.
func BenchmarkDecideRemote(b *testing.B) {
	r, err := opa.NewRemote(startOPA(b, policyDir), nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range benchInputs {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				d, err := r.Decide(b.Context(), bc.in)
				if err != nil || !d.Allow {
					b.Fatal(d, err)
				}
			}
		})
	}
}

// BenchmarkInput compares building the input value directly (what Decide does) with
// taking the struct through JSON (what rego.EvalInput(in) would do).
func BenchmarkInput(b *testing.B) {
	in := benchInputs[1].in
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := opa.InputValue(in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			js, err := json.Marshal(in)
			if err != nil {
				b.Fatal(err)
			}
			var x any
			if err := json.Unmarshal(js, &x); err != nil {
				b.Fatal(err)
			}
			if _, err := ast.InterfaceToValue(x); err != nil {
				b.Fatal(err)
			}
		}
	})
}
