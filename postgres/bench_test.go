//go:build linux

package postgres_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/internal/cpubench"
	"github.com/agate-gw/agate/postgres"
)

// BenchmarkAccept measures Accept into an existing session, serially and from parallel
// goroutines (which all write to that one session, so they queue on its row lock), and
// serially with the bus enabled (two outbox records more per Accept). Besides
// wall time it reports the CPU time (user+sys) per Accept of this process as "cpu-µs/op"
// (pgx, encoding, GC) and, when the server runs on this machine and its processes are
// readable, of the server backends serving the store as "server-cpu-µs/op".
func BenchmarkAccept(b *testing.B) {
	for _, bc := range []struct {
		name     string
		parallel bool
		bus      bool
	}{{"serial", false, false}, {"parallel", true, false}, {"serial-bus", false, true}} {
		b.Run(bc.name, func(b *testing.B) {
			s := open(b, freshDatabase(b), postgres.Config{Bus: bc.bus, Origin: "r1"})
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
			server := backendsCPU(b, s)
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
			if used, ok := server(); ok {
				b.ReportMetric(float64(used)/1e3/float64(b.N), "server-cpu-µs/op")
			}
		})
	}
}

// backendsCPU starts measuring the CPU time of the server processes serving s's database;
// the function it returns gives the nanoseconds used since, and false if they cannot be
// read (a remote server, no access to /proc).
func backendsCPU(b *testing.B, s *postgres.Store) func() (int64, bool) {
	pids := func() []int {
		rows, err := postgres.PoolOf(s).Query(context.Background(),
			`SELECT pid FROM pg_stat_activity WHERE datname = current_database()`)
		if err != nil {
			b.Fatal(err)
		}
		defer rows.Close()
		var out []int
		for rows.Next() {
			var pid int
			if err := rows.Scan(&pid); err != nil {
				b.Fatal(err)
			}
			out = append(out, pid)
		}
		return out
	}
	read := func(pid int) (int64, bool) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, false
		}
		// Fields after the command name (which may hold spaces): utime and stime are the
		// 14th and 15th fields of the line, in clock ticks (100 per second on Linux).
		_, rest, ok := strings.Cut(string(stat), ") ")
		f := strings.Fields(rest)
		if !ok || len(f) < 13 {
			return 0, false
		}
		utime, err1 := strconv.ParseInt(f[11], 10, 64)
		stime, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, false
		}
		return (utime + stime) * 1e7, true
	}
	before := map[int]int64{}
	for _, pid := range pids() {
		if t, ok := read(pid); ok {
			before[pid] = t
		}
	}
	return func() (int64, bool) {
		var used int64
		for _, pid := range pids() {
			t, ok := read(pid)
			if !ok {
				return 0, false
			}
			used += t - before[pid]
		}
		return used, true
	}
}
