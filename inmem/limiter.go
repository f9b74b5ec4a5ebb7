package inmem

import (
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// Limit is a rate limit: Rate requests per Per on average, with bursts of up to Burst
// requests at once. Burst <= 0 means Burst = Rate. A Limit with Rate <= 0 or Per <= 0 is
// no limit: every request is allowed.
type Limit struct {
	Rate  int
	Per   time.Duration
	Burst int
}

// Unlimited reports whether l limits nothing (Rate <= 0 or Per <= 0).
func (l Limit) Unlimited() bool { return l.Rate <= 0 || l.Per <= 0 }

// Interval returns the GCRA emission interval: the average time between two allowed
// requests, Per/Rate (at least 1ns). It is meaningless for an unlimited Limit.
func (l Limit) Interval() time.Duration {
	return max(l.Per/time.Duration(l.Rate), 1)
}

// BurstSize returns the effective burst: Burst, or Rate when Burst <= 0, and at least 1.
func (l Limit) BurstSize() int {
	if l.Burst <= 0 {
		return max(l.Rate, 1)
	}
	return l.Burst
}

// Divide returns the share of l that one of n replicas may grant on its own: the same
// Rate over n times the period (so no rounding of the rate), and the burst divided by n,
// rounded up, at least 1. n <= 1 returns l unchanged.
func (l Limit) Divide(n int) Limit {
	if n <= 1 || l.Unlimited() {
		return l
	}
	b := l.BurstSize()
	return Limit{Rate: l.Rate, Per: l.Per * time.Duration(n), Burst: max((b+n-1)/n, 1)}
}

// Decision is the outcome of one rate-limit check.
type Decision struct {
	Allowed bool
	// Remaining is how many more requests would be allowed right now; -1 for no limit.
	Remaining int
	// RetryAfter is, when Allowed is false, how long until the next request can be allowed.
	RetryAfter time.Duration
	// ResetAfter is how long until the key is back to its full burst if no request comes.
	ResetAfter time.Duration
}

// unlimited is the decision for a Limit that limits nothing.
var unlimited = Decision{Allowed: true, Remaining: -1}

// LimiterConfig tunes a Limiter. The zero value is usable.
type LimiterConfig struct {
	// Divisor divides every limit (Limit.Divide) before it is applied: set it to the number
	// of replicas when this limiter stands in for a shared one, so that the replicas
	// together grant about the configured limit. <= 1: limits are applied as given.
	Divisor int
	// MaxKeys bounds the number of keys remembered (default 100000). Idle keys, whose
	// state has fully replenished, are forgotten first; only when that is not enough are
	// other keys forgotten, which lets those keys start again from a full burst.
	MaxKeys int
	// Now is the clock (default time.Now); tests inject their own.
	Now func() time.Time
}

const (
	limiterShards = 16
	sweepEvery    = time.Minute // idle keys are also swept at most this often per shard
)

// Limiter is an in-process GCRA (generic cell rate algorithm) rate limiter, the embedded
// default for rate limits and the fallback of redis.Limiter. It is safe for concurrent
// use, bounded in memory (LimiterConfig.MaxKeys) and runs no goroutine. The zero Limiter
// is not usable; call NewLimiter.
type Limiter struct {
	divisor int
	now     func() time.Time
	epoch   time.Time // times are kept as nanoseconds since epoch
	seed    maphash.Seed
	perCap  int
	shards  [limiterShards]limiterShard
}

type limiterShard struct {
	mu        sync.Mutex
	tat       map[string]int64 // theoretical arrival time of the next request, ns since epoch
	lastSweep int64
}

// NewLimiter returns a limiter configured by cfg.
func NewLimiter(cfg LimiterConfig) *Limiter {
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 100_000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Limiter{
		divisor: max(cfg.Divisor, 1),
		now:     cfg.Now,
		epoch:   cfg.Now(),
		seed:    maphash.MakeSeed(),
		perCap:  max(cfg.MaxKeys/limiterShards, 1),
	}
	for i := range l.shards {
		l.shards[i].tat = make(map[string]int64)
	}
	return l
}

// Divisor returns the divisor applied to every limit (at least 1).
func (l *Limiter) Divisor() int { return l.divisor }

// Allow records one request for key under limit (divided by the configured Divisor) and
// reports whether it is allowed. The error is always nil; ctx is unused.
func (l *Limiter) Allow(_ context.Context, key string, limit Limit) (Decision, error) {
	if limit.Unlimited() {
		return unlimited, nil
	}
	limit = limit.Divide(l.divisor)
	interval := int64(limit.Interval())
	tolerance := interval * int64(limit.BurstSize()) // how far TAT may run ahead of now

	s := &l.shards[maphash.String(l.seed, key)%limiterShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	now := int64(l.now().Sub(l.epoch))

	tat, ok := s.tat[key]
	tat = max(tat, now)
	newTAT := tat + interval
	allowAt := newTAT - tolerance
	if now < allowAt {
		return Decision{RetryAfter: time.Duration(allowAt - now), ResetAfter: time.Duration(tat - now)}, nil
	}
	if !ok {
		s.makeRoom(now, l.perCap)
	}
	s.tat[key] = newTAT
	return Decision{
		Allowed:    true,
		Remaining:  int((now - allowAt) / interval),
		ResetAfter: time.Duration(newTAT - now),
	}, nil
}

// makeRoom makes room for one more key: it forgets idle keys (whose TAT has passed, so
// they are indistinguishable from unknown keys) when the shard is full or was not swept for
// a while, and if the shard is still full, arbitrary keys until it is 7/8 full.
func (s *limiterShard) makeRoom(now int64, capacity int) {
	if len(s.tat) < capacity && now-s.lastSweep < int64(sweepEvery) {
		return
	}
	s.lastSweep = now
	for k, tat := range s.tat {
		if tat <= now {
			delete(s.tat, k)
		}
	}
	if len(s.tat) < capacity {
		return
	}
	target := capacity - max(capacity/8, 1)
	for k := range s.tat { // map order is random enough for an emergency eviction
		if len(s.tat) <= target {
			break
		}
		delete(s.tat, k)
	}
}

// Len returns how many keys the limiter remembers.
func (l *Limiter) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.tat)
		s.mu.Unlock()
	}
	return n
}
