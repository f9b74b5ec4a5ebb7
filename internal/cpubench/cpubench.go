// Package cpubench measures benchmarks in CPU time per operation, which a shared, noisy
// machine distorts far less than wall time. For benchmarks only.
package cpubench

import (
	"syscall"
	"testing"
	"time"
)

// Time returns the user+system CPU time the process has used so far.
func Time(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Report stops the timer and reports the CPU used since start, per operation, as
// "cpu-µs/op" beside ns/op.
func Report(b *testing.B, start time.Duration) {
	b.StopTimer()
	b.ReportMetric(float64((Time(b)-start).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
}

// Measure runs the benchmark loop (which calls b.Loop) and reports its CPU per operation.
func Measure(b *testing.B, loop func()) {
	b.ReportAllocs()
	b.ResetTimer()
	start := Time(b)
	loop()
	Report(b, start)
}
