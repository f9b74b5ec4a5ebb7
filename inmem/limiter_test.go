package inmem_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agate-gw/agate/inmem"
	"github.com/google/go-cmp/cmp"
)

// rateLimiter is the consumer-side contract (httpapi) that inmem.Limiter satisfies.
type rateLimiter interface {
	Allow(ctx context.Context, key string, limit inmem.Limit) (inmem.Decision, error)
}

var _ rateLimiter = (*inmem.Limiter)(nil)

// clock is a manual clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func allow(t *testing.T, l *inmem.Limiter, key string, lim inmem.Limit) inmem.Decision {
	t.Helper()
	d, err := l.Allow(t.Context(), key, lim)
	if err != nil {
		t.Fatalf("Allow(%q): %v", key, err)
	}
	return d
}

func TestLimiterAllowsBurstThenPacesAtRate(t *testing.T) {
	c := newClock()
	l := inmem.NewLimiter(inmem.LimiterConfig{Now: c.Now})
	lim := inmem.Limit{Rate: 10, Per: time.Second, Burst: 3} // one every 100ms, 3 at once

	var got []inmem.Decision
	for range 4 {
		got = append(got, allow(t, l, "k", lim))
	}
	want := []inmem.Decision{
		{Allowed: true, Remaining: 2, ResetAfter: 100 * time.Millisecond},
		{Allowed: true, Remaining: 1, ResetAfter: 200 * time.Millisecond},
		{Allowed: true, Remaining: 0, ResetAfter: 300 * time.Millisecond},
		{Allowed: false, Remaining: 0, RetryAfter: 100 * time.Millisecond, ResetAfter: 300 * time.Millisecond},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("burst decisions (-want +got):\n%s", diff)
	}

	c.Advance(40 * time.Millisecond)
	if d := allow(t, l, "k", lim); d.Allowed || d.RetryAfter != 60*time.Millisecond {
		t.Fatalf("after 40ms: %+v, want denied with RetryAfter 60ms", d)
	}
	c.Advance(60 * time.Millisecond)
	if d := allow(t, l, "k", lim); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("after 100ms: %+v, want allowed with nothing remaining", d)
	}
	c.Advance(time.Second) // fully replenished
	if d := allow(t, l, "k", lim); !d.Allowed || d.Remaining != 2 {
		t.Fatalf("after idling: %+v, want allowed with 2 remaining", d)
	}
}

func TestLimiterCountsAllowedRequestsOverTime(t *testing.T) {
	c := newClock()
	l := inmem.NewLimiter(inmem.LimiterConfig{Now: c.Now})
	lim := inmem.Limit{Rate: 10, Per: time.Second, Burst: 5}
	allowed := 0
	for range 1000 { // 10 seconds, a request every 10ms
		if allow(t, l, "k", lim).Allowed {
			allowed++
		}
		c.Advance(10 * time.Millisecond)
	}
	if want := 5 + 10*10; allowed < want-1 || allowed > want {
		t.Fatalf("allowed %d in 10s at 10/s with burst 5, want about %d", allowed, want)
	}
}

func TestLimiterKeysAreIndependent(t *testing.T) {
	l := inmem.NewLimiter(inmem.LimiterConfig{Now: newClock().Now})
	lim := inmem.Limit{Rate: 1, Per: time.Minute, Burst: 1}
	if !allow(t, l, "tenant-a", lim).Allowed || allow(t, l, "tenant-a", lim).Allowed {
		t.Fatal("tenant-a: want first allowed, second denied")
	}
	if !allow(t, l, "tenant-b", lim).Allowed {
		t.Fatal("tenant-b denied because of tenant-a")
	}
}

func TestLimiterBurstDefaultsToRate(t *testing.T) {
	l := inmem.NewLimiter(inmem.LimiterConfig{Now: newClock().Now})
	lim := inmem.Limit{Rate: 4, Per: time.Second}
	n := 0
	for range 10 {
		if allow(t, l, "k", lim).Allowed {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("allowed %d at once with Rate 4 and no Burst, want 4", n)
	}
}

func TestLimiterWithoutLimitAllowsEverything(t *testing.T) {
	l := inmem.NewLimiter(inmem.LimiterConfig{Now: newClock().Now})
	for _, lim := range []inmem.Limit{{}, {Rate: 5}, {Per: time.Second}, {Rate: -1, Per: time.Second}} {
		for range 100 {
			if d := allow(t, l, "k", lim); !d.Allowed || d.Remaining != -1 {
				t.Fatalf("limit %+v: %+v, want allowed with Remaining -1", lim, d)
			}
		}
	}
	if l.Len() != 0 {
		t.Fatalf("remembers %d keys for no limit, want 0", l.Len())
	}
}

func TestLimiterDivisorSharesTheLimitBetweenReplicas(t *testing.T) {
	c := newClock()
	l := inmem.NewLimiter(inmem.LimiterConfig{Divisor: 3, Now: c.Now})
	if l.Divisor() != 3 {
		t.Fatalf("Divisor() = %d, want 3", l.Divisor())
	}
	lim := inmem.Limit{Rate: 30, Per: time.Second, Burst: 10} // per replica: 10/s, burst 4
	burst := 0
	for range 20 {
		if allow(t, l, "k", lim).Allowed {
			burst++
		}
	}
	if burst != 4 {
		t.Fatalf("burst %d with Burst 10 over 3 replicas, want 4 (rounded up)", burst)
	}
	allowed := 0
	for range 100 { // 1 second more
		c.Advance(10 * time.Millisecond)
		if allow(t, l, "k", lim).Allowed {
			allowed++
		}
	}
	if allowed != 10 {
		t.Fatalf("allowed %d in 1s at 30/s over 3 replicas, want 10", allowed)
	}
}

func TestLimitDivide(t *testing.T) {
	tests := []struct {
		in   inmem.Limit
		n    int
		want inmem.Limit
	}{
		{inmem.Limit{Rate: 10, Per: time.Second, Burst: 10}, 1, inmem.Limit{Rate: 10, Per: time.Second, Burst: 10}},
		{inmem.Limit{Rate: 10, Per: time.Second, Burst: 10}, 0, inmem.Limit{Rate: 10, Per: time.Second, Burst: 10}},
		{inmem.Limit{Rate: 10, Per: time.Second, Burst: 10}, 2, inmem.Limit{Rate: 10, Per: 2 * time.Second, Burst: 5}},
		{inmem.Limit{Rate: 10, Per: time.Second}, 3, inmem.Limit{Rate: 10, Per: 3 * time.Second, Burst: 4}},
		{inmem.Limit{Rate: 1, Per: time.Second, Burst: 1}, 5, inmem.Limit{Rate: 1, Per: 5 * time.Second, Burst: 1}},
		{inmem.Limit{}, 5, inmem.Limit{}},
	}
	for _, tc := range tests {
		if got := tc.in.Divide(tc.n); got != tc.want {
			t.Errorf("%+v.Divide(%d) = %+v, want %+v", tc.in, tc.n, got, tc.want)
		}
	}
}

func TestLimiterForgetsIdleKeysAndStaysBounded(t *testing.T) {
	c := newClock()
	l := inmem.NewLimiter(inmem.LimiterConfig{MaxKeys: 160, Now: c.Now})
	lim := inmem.Limit{Rate: 1, Per: time.Second, Burst: 1}
	for i := range 10_000 {
		allow(t, l, fmt.Sprint("key-", i), lim)
		if n := l.Len(); n > 160 {
			t.Fatalf("after %d keys: remembers %d, want <= 160", i+1, n)
		}
	}

	// Idle keys are forgotten without losing the state of busy ones.
	l = inmem.NewLimiter(inmem.LimiterConfig{MaxKeys: 160, Now: c.Now})
	busy := inmem.Limit{Rate: 1, Per: 24 * time.Hour, Burst: 1}
	allow(t, l, "busy", busy)
	for i := range 5000 {
		allow(t, l, fmt.Sprint("idle-", i), lim)
		c.Advance(2 * time.Second) // every earlier idle key has replenished
	}
	if allow(t, l, "busy", busy).Allowed {
		t.Fatal("busy key was forgotten while idle keys were evicted")
	}
}

func TestLimiterConcurrentCallersNeverExceedTheBurst(t *testing.T) {
	l := inmem.NewLimiter(inmem.LimiterConfig{Now: newClock().Now})
	lim := inmem.Limit{Rate: 50, Per: time.Hour, Burst: 50}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 200 {
		wg.Go(func() {
			d, err := l.Allow(context.Background(), "shared", lim)
			if err != nil {
				t.Error(err)
			}
			if d.Allowed {
				allowed.Add(1)
			}
		})
	}
	wg.Wait()
	if allowed.Load() != 50 {
		t.Fatalf("allowed %d of 200 concurrent requests with burst 50, want 50", allowed.Load())
	}
}
