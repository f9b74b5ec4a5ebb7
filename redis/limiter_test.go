package redis_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/redis"
	"github.com/google/go-cmp/cmp"
	goredis "github.com/redis/go-redis/v9"
)

// rateLimiter is the consumer-side contract (httpapi) that both limiters satisfy.
type rateLimiter interface {
	Allow(ctx context.Context, key string, limit inmem.Limit) (inmem.Decision, error)
}

var (
	_ rateLimiter = (*redis.Limiter)(nil)
	_ rateLimiter = (*inmem.Limiter)(nil)
)

// slowLimit replenishes so slowly (one request every 6 minutes) that no test sees it.
var slowLimit = inmem.Limit{Rate: 10, Per: time.Hour, Burst: 10}

// testConfig is a Config for tests: generous timeouts (a loaded machine running -race can
// take more than 50ms for a round trip) and quick probes.
func testConfig(prefix string) redis.Config {
	return redis.Config{Prefix: prefix, Timeout: 2 * time.Second, ProbeEvery: 20 * time.Millisecond}
}

func mustAllow(t *testing.T, l rateLimiter, key string, lim inmem.Limit) inmem.Decision {
	t.Helper()
	d, err := l.Allow(t.Context(), key, lim)
	if err != nil {
		t.Fatalf("Allow(%q) = %v; a limiter must never fail because of Redis", key, err)
	}
	return d
}

// countAllowed makes n requests and returns how many were allowed.
func countAllowed(t *testing.T, l rateLimiter, key string, lim inmem.Limit, n int) int {
	t.Helper()
	allowed := 0
	for range n {
		if mustAllow(t, l, key, lim).Allowed {
			allowed++
		}
	}
	return allowed
}

func TestLimiterGrantsTheBurstThenDenies(t *testing.T) {
	client := sharedClient(t)
	prefix := testPrefix(t, client)
	l := redis.NewLimiter(client, nil, testConfig(prefix))
	lim := inmem.Limit{Rate: 3, Per: time.Hour, Burst: 3} // one every 20 minutes

	var remaining []int
	for range 3 {
		d := mustAllow(t, l, "tenant:acme", lim)
		if !d.Allowed {
			t.Fatalf("request %d of the burst denied: %+v", len(remaining)+1, d)
		}
		remaining = append(remaining, d.Remaining)
	}
	if diff := cmp.Diff([]int{2, 1, 0}, remaining); diff != "" {
		t.Fatalf("Remaining over the burst (-want +got):\n%s", diff)
	}
	d := mustAllow(t, l, "tenant:acme", lim)
	if d.Allowed || d.Remaining != 0 {
		t.Fatalf("request over the burst: %+v, want denied", d)
	}
	// The next request may come one interval (20 minutes) after the first; the bucket is
	// full again three intervals after it. A little of that has passed already.
	if d.RetryAfter <= 19*time.Minute || d.RetryAfter > 20*time.Minute {
		t.Errorf("RetryAfter = %v, want just under 20m", d.RetryAfter)
	}
	if d.ResetAfter <= 59*time.Minute || d.ResetAfter > time.Hour {
		t.Errorf("ResetAfter = %v, want just under 1h", d.ResetAfter)
	}
	if l.Degraded() {
		t.Error("Degraded() = true with Redis up")
	}

	// The state is one key, which expires when the bucket would be full again.
	ttl, err := client.PTTL(t.Context(), prefix+"rl:tenant:acme").Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl <= 59*time.Minute || ttl > time.Hour {
		t.Errorf("TTL of %srl:tenant:acme = %v, want just under 1h", prefix, ttl)
	}
	if !mustAllow(t, l, "tenant:other", lim).Allowed {
		t.Error("another key is limited by tenant:acme's requests")
	}
}

func TestLimiterReplenishesAtTheRate(t *testing.T) {
	client := sharedClient(t)
	l := redis.NewLimiter(client, nil, testConfig(testPrefix(t, client)))
	lim := inmem.Limit{Rate: 1000, Per: time.Second, Burst: 1} // one per millisecond
	if !mustAllow(t, l, "k", lim).Allowed {
		t.Fatal("first request denied")
	}
	eventually(t, "allowed again after the interval", func() bool {
		return mustAllow(t, l, "k", lim).Allowed
	})
}

func TestLimiterConcurrentRequestsNeverExceedTheLimit(t *testing.T) {
	client := sharedClient(t)
	l := redis.NewLimiter(client, nil, testConfig(testPrefix(t, client)))
	lim := inmem.Limit{Rate: 50, Per: time.Hour, Burst: 50}

	var allowed atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 200 {
		wg.Go(func() {
			<-start
			d, err := l.Allow(context.Background(), "hot", lim)
			if err != nil {
				t.Error(err)
			}
			if d.Allowed {
				allowed.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if l.Degraded() {
		t.Fatal("Redis calls failed under concurrency; decisions came from the fallback")
	}
	if allowed.Load() != 50 {
		t.Fatalf("%d of 200 concurrent requests allowed with a limit of 50, want exactly 50", allowed.Load())
	}
}

func TestLimiterReplicasShareOneLimit(t *testing.T) {
	url := redisURL(t)
	prefix := testPrefix(t, sharedClient(t))
	var replicas []*redis.Limiter
	for range 3 {
		cfg := testConfig(prefix)
		cfg.Replicas = 3
		replicas = append(replicas, redis.NewLimiter(newClient(t, url), nil, cfg))
	}
	allowed := 0
	for i := range 30 {
		if mustAllow(t, replicas[i%3], "tenant:acme", slowLimit).Allowed {
			allowed++
		}
	}
	if allowed != 10 {
		t.Fatalf("3 replicas allowed %d requests together with a limit of 10, want 10", allowed)
	}
}

func TestLimiterKeepsLimitingWhileRedisIsDownAndRecovers(t *testing.T) {
	srv := startServer(t)
	client := newClient(t, srv.URL())
	cfg := testConfig("agatetest:")
	cfg.Replicas = 2
	l := redis.NewLimiter(client, nil, cfg)
	fromRedis := func(key string) bool {
		n, err := client.Exists(t.Context(), "agatetest:rl:"+key).Result()
		return err == nil && n == 1
	}

	if n := countAllowed(t, l, "before", slowLimit, 3); n != 3 || !fromRedis("before") || l.Degraded() {
		t.Fatalf("with Redis up: %d allowed, key in Redis %v, degraded %v; want 3, true, false", n, fromRedis("before"), l.Degraded())
	}

	srv.Shutdown(false)
	// Every request is still answered, and the limit, divided among 2 replicas, holds.
	if n := countAllowed(t, l, "tenant:acme", slowLimit, 30); n != 5 {
		t.Fatalf("Redis down: %d of 30 requests allowed, want 5 (limit 10 over 2 replicas)", n)
	}
	if !l.Degraded() {
		t.Fatal("Degraded() = false with Redis down")
	}

	srv.Start() // empty: its state is gone, and so is its script cache
	eventually(t, "recovered", func() bool {
		mustAllow(t, l, "probe", slowLimit)
		return !l.Degraded()
	})
	// The fallback has spent tenant:acme's share; Redis has not seen it, so allowing it
	// again shows that the decisions come from Redis.
	if n := countAllowed(t, l, "tenant:acme", slowLimit, 30); n != 10 || !fromRedis("tenant:acme") {
		t.Fatalf("Redis back: %d of 30 allowed, key in Redis %v; want 10 decided by Redis", n, fromRedis("tenant:acme"))
	}
}

// hungServer accepts connections and never answers, like a Redis host that stopped.
func hungServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "redis://" + ln.Addr().String() + "/0"
}

// commandCounter counts the commands a client sends.
type commandCounter struct{ n atomic.Int64 }

func (c *commandCounter) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (c *commandCounter) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}
func (c *commandCounter) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

func TestLimiterDoesNotWaitForAHungRedisOnEveryRequest(t *testing.T) {
	client := newClient(t, hungServer(t))
	var sent commandCounter
	client.AddHook(&sent)
	l := redis.NewLimiter(client, nil, redis.Config{ProbeEvery: time.Hour}) // default 50ms timeout

	if n := countAllowed(t, l, "k", slowLimit, 1); n != 1 || !l.Degraded() {
		t.Fatalf("first request: allowed %d, degraded %v; want 1 from the fallback, true", n, l.Degraded())
	}
	before := sent.n.Load()
	if n := countAllowed(t, l, "k", slowLimit, 100); n != 9 {
		t.Fatalf("%d of 100 more requests allowed by the fallback, want 9", n)
	}
	if after := sent.n.Load(); after != before {
		t.Fatalf("%d commands sent to Redis within one probe interval, want none", after-before)
	}
}

func TestLimiterCallerCancellationDoesNotDegrade(t *testing.T) {
	client := newClient(t, hungServer(t))
	l := redis.NewLimiter(client, nil, redis.Config{Timeout: time.Minute})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	d, err := l.Allow(ctx, "k", slowLimit)
	if err != nil || !d.Allowed {
		t.Fatalf("Allow with a cancelled context = %+v, %v; want an answer from the fallback", d, err)
	}
	if l.Degraded() {
		t.Fatal("Degraded() = true after the caller gave up")
	}
}

func TestLimiterUsesTheFallbackItIsGiven(t *testing.T) {
	client := newClient(t, hungServer(t))
	fallback := inmem.NewLimiter(inmem.LimiterConfig{Divisor: 5})
	l := redis.NewLimiter(client, fallback, redis.Config{Replicas: 1, ProbeEvery: time.Hour})
	if n := countAllowed(t, l, "k", slowLimit, 20); n != 2 {
		t.Fatalf("%d allowed by a fallback dividing by 5, want 2", n)
	}
	if fallback.Len() != 1 {
		t.Fatalf("the given fallback holds %d keys, want 1", fallback.Len())
	}
}
