//go:build linux || darwin

package sqlite_test

import (
	"path/filepath"
	"syscall"
	"testing"

	"github.com/agate-gw/agate"
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
			start := cpuTime(b)
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
			b.StopTimer()
			b.ReportMetric(float64(cpuTime(b)-start)/1e3/float64(b.N), "cpu-µs/op")
		})
	}
}

// cpuTime returns the user+sys CPU time the process used so far, in nanoseconds.
func cpuTime(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
