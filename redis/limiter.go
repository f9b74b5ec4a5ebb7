package redis

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/agate-gw/agate/inmem"
	goredis "github.com/redis/go-redis/v9"
)

// gcra is the whole rate-limit decision, run atomically by Redis (a script runs alone),
// so concurrent requests on any number of replicas can never be granted more than the
// limit. Times are microseconds of the Redis server's clock, so the replicas' clocks do not
// matter.
//
// The key holds the theoretical arrival time (TAT) of the next request; ahead is how far
// it runs ahead of now (0 for a missing or past TAT). A request is allowed when ahead plus
// one emission interval stays within the burst tolerance (interval × burst); only then is
// TAT moved by one interval and stored, with a TTL that ends when the bucket is full again
// (an expired key and a full bucket are the same). The arithmetic is done relative to now
// so that doubles keep sub-microsecond precision.
//
// KEYS[1] the limit's key; ARGV[1] the emission interval in µs (may be fractional);
// ARGV[2] the burst. Returns {allowed 0|1, remaining, retry_after µs, reset_after µs}.
var gcra = goredis.NewScript(`
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ahead = (tonumber(redis.call('GET', KEYS[1])) or now) - now
if ahead < 0 then ahead = 0 end
local new_ahead = ahead + interval
if new_ahead > tolerance then
  return {0, 0, math.ceil(new_ahead - tolerance), math.ceil(ahead)}
end
redis.call('SET', KEYS[1], string.format('%.17g', now + new_ahead), 'PX', math.ceil(new_ahead / 1000))
return {1, math.floor((tolerance - new_ahead) / interval + 1e-9), 0, math.ceil(new_ahead)}
`)

// Limiter is a rate limiter shared by every replica through Redis. It is safe for
// concurrent use. The zero Limiter is not usable; call NewLimiter.
type Limiter struct {
	client   *goredis.Client
	fallback *inmem.Limiter
	cfg      Config
	health   health
}

// NewLimiter returns a limiter that keeps its state in Redis through client (see
// NewClient) and answers from fallback while Redis fails. The fallback should divide
// limits by the number of replicas (inmem.LimiterConfig.Divisor), so that the replicas
// together still grant about the limit; when fallback is nil, NewLimiter builds one that
// divides by cfg.Replicas.
func NewLimiter(client *goredis.Client, fallback *inmem.Limiter, cfg Config) *Limiter {
	cfg = cfg.withDefaults()
	if fallback == nil {
		fallback = inmem.NewLimiter(inmem.LimiterConfig{Divisor: cfg.Replicas})
	}
	return &Limiter{
		client:   client,
		fallback: fallback,
		cfg:      cfg,
		health:   health{name: "limiter", every: cfg.ProbeEvery, log: cfg.Logger},
	}
}

// Allow records one request for key under limit and reports whether it is allowed. The
// decision comes from Redis (key Prefix+"rl:"+key); when Redis fails or is known to be
// failing, from the fallback limiter. The error is always nil: a request never fails
// because Redis is down.
func (l *Limiter) Allow(ctx context.Context, key string, limit inmem.Limit) (inmem.Decision, error) {
	if limit.Unlimited() || !l.health.try() {
		return l.fallback.Allow(ctx, key, limit)
	}
	d, err := l.eval(ctx, key, limit)
	if err != nil {
		if ctx.Err() == nil { // the caller giving up says nothing about Redis
			l.health.fail(err)
		}
		return l.fallback.Allow(ctx, key, limit)
	}
	l.health.ok()
	return d, nil
}

// Degraded reports whether Redis is failing, so that decisions come from the fallback.
func (l *Limiter) Degraded() bool { return l.health.degraded.Load() }

func (l *Limiter) eval(ctx context.Context, key string, limit inmem.Limit) (inmem.Decision, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.Timeout)
	defer cancel()
	interval := float64(limit.Per) / float64(limit.Rate) / float64(time.Microsecond)
	r, err := gcra.Run(ctx, l.client, []string{l.cfg.Prefix + "rl:" + key},
		strconv.FormatFloat(interval, 'g', -1, 64), limit.BurstSize()).Int64Slice()
	if err != nil {
		return inmem.Decision{}, fmt.Errorf("redis rate limit %s: %w", key, err)
	}
	if len(r) != 4 {
		return inmem.Decision{}, fmt.Errorf("redis rate limit %s: script returned %d values", key, len(r))
	}
	return inmem.Decision{
		Allowed:    r[0] == 1,
		Remaining:  int(r[1]),
		RetryAfter: time.Duration(r[2]) * time.Microsecond,
		ResetAfter: time.Duration(r[3]) * time.Microsecond,
	}, nil
}
