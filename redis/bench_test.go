package redis_test

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/internal/cpubench"
	"github.com/agate-gw/agate/redis"
	"github.com/google/uuid"
)

// BenchmarkRedisAllow is one rate-limit decision through the Lua script (EVALSHA), on a
// few keys, one request at a time and from many goroutines.
func BenchmarkRedisAllow(b *testing.B) {
	client := sharedClient(b)
	l := redis.NewLimiter(client, nil, redis.Config{Prefix: testPrefix(b, client), Timeout: time.Second})
	lim := inmem.Limit{Rate: 1_000_000, Per: time.Second, Burst: 1000}
	keys := []string{"tenant:a", "tenant:b", "key:c", "key:d"}
	b.Run("serial", func(b *testing.B) {
		cpubench.Measure(b, func() {
			i := 0
			for b.Loop() {
				l.Allow(context.Background(), keys[i%len(keys)], lim)
				i++
			}
		})
	})
	b.Run("parallel", func(b *testing.B) {
		cpubench.Measure(b, func() {
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					l.Allow(context.Background(), keys[i%len(keys)], lim)
					i++
				}
			})
		})
	})
	if l.Degraded() {
		b.Fatal("Redis calls failed; the figures are the fallback's")
	}
}

// BenchmarkInmemAllow is the same decision from the in-process limiter.
func BenchmarkInmemAllow(b *testing.B) {
	l := inmem.NewLimiter(inmem.LimiterConfig{})
	lim := inmem.Limit{Rate: 1_000_000, Per: time.Second, Burst: 1000}
	cpubench.Measure(b, func() {
		i := 0
		for b.Loop() {
			l.Allow(context.Background(), fmt.Sprint("key:", i%4), lim)
			i++
		}
	})
}

// BenchmarkCacheHit is a history read of 50 events served from Redis.
func BenchmarkCacheHit(b *testing.B) {
	client := sharedClient(b)
	s := newFakeStore()
	c := redis.NewCache(client, s, redis.Config{Prefix: testPrefix(b, client), Timeout: time.Second})
	id := uuid.New()
	for i := range 40 {
		s.turn(id, fmt.Sprintf("question %d, of a typical length for a chat message to a model", i))
	}
	cpubench.Measure(b, func() {
		for b.Loop() {
			if _, err := c.Messages(context.Background(), id, math.MaxInt64, 50); err != nil {
				b.Fatal(err)
			}
		}
	})
	if s.reads.Load() != 1 {
		b.Fatalf("%d store reads, want 1", s.reads.Load())
	}
}
