//go:build linux || darwin

package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/internal/cpubench"
)

// BenchmarkAccept measures Accept into an existing session, serially and from parallel
// goroutines. Besides wall time it reports the process's CPU time (user+sys) per Accept as
// "cpu-µs/op", which includes SQLite's work, GC and WAL checkpoints.
func BenchmarkAccept(b *testing.B) {
	for _, bc := range []struct {
		name     string
		parallel bool
	}{{"serial", false}, {"parallel", true}} {
		b.Run(bc.name, func(b *testing.B) {
			s := open(b, filepath.Join(b.TempDir(), "agate.db"))
			first, err := s.Accept(b.Context(), agate.Inbound{Tenant: "acme", Subject: "alice", Message: "hello"})
			if err != nil {
				b.Fatal(err)
			}
			in := agate.Inbound{
				Tenant: "acme", Subject: "alice", SessionID: first.Turn.SessionID, PersonaID: "helper",
				Message:  "What is the weather like in Lisbon tomorrow, and should I take an umbrella?",
				Metadata: map[string]any{"client": "web"},
			}
			b.ReportAllocs()
			start := cpubench.Time(b)
			b.ResetTimer()
			if bc.parallel {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := s.Accept(b.Context(), in); err != nil {
							b.Error(err)
							return
						}
					}
				})
			} else {
				for range b.N {
					if _, err := s.Accept(b.Context(), in); err != nil {
						b.Fatal(err)
					}
				}
			}
			cpubench.Report(b, start)
		})
	}
}
