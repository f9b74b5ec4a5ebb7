// Package redis holds the Redis adapters of the gateway (go-redis/v9): the shared rate
// limiter (Limiter, GCRA in one Lua script) and the transcript cache in front of the
// store's History (Cache).
//
// Both are built to survive Redis going away: every call to Redis has its own short
// deadline (Config.Timeout); when a call fails the adapter answers without Redis (the
// limiter from an in-process inmem.Limiter, the cache from the store), reports Degraded,
// and tries Redis again at most once per Config.ProbeEvery until a call succeeds. No
// method fails because of Redis alone, and neither adapter runs a goroutine.
//
// The value types of limits (inmem.Limit, inmem.Decision) live in package inmem, which
// holds the in-process limiter; this package imports them from there.
package redis

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Config tunes Limiter and Cache. The zero value is usable.
type Config struct {
	// Prefix starts every key (default "agate:"): limits are stored under Prefix+"rl:"+key,
	// transcripts under Prefix+"tx:"+session.
	Prefix string
	// Timeout bounds each call to Redis (default 50ms).
	Timeout time.Duration
	// ProbeEvery is how often, at most, Redis is tried again while it is failing
	// (default 1s). Between probes the adapters do not wait for Redis at all.
	ProbeEvery time.Duration
	// Replicas is the number of gateway replicas sharing Redis (default 1). When NewLimiter
	// is given no fallback, the one it builds divides every limit by Replicas.
	Replicas int
	// CacheTTL is how long a transcript stays cached after it was filled (default 5m).
	// It also bounds how long a failed invalidation is remembered (see Cache).
	CacheTTL time.Duration
	// CacheEvents is how many of a session's latest conversation events are cached
	// (default 64). Reads asking for more go to the store unless the session has fewer.
	CacheEvents int
	// MaxDirty bounds how many sessions with a failed invalidation are remembered one by
	// one (default 10000); beyond it the cache is bypassed for every session for CacheTTL.
	MaxDirty int
	// Logger receives one line when Redis starts failing and one when it is back
	// (default: discard).
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = "agate:"
	}
	if c.Timeout <= 0 {
		c.Timeout = 50 * time.Millisecond
	}
	if c.ProbeEvery <= 0 {
		c.ProbeEvery = time.Second
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.CacheTTL <= 0 {
		c.CacheTTL = 5 * time.Minute
	}
	if c.CacheEvents <= 0 {
		c.CacheEvents = 64
	}
	if c.MaxDirty <= 0 {
		c.MaxDirty = 10_000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// NewClient returns a client for url (redis://[user:password@]host:port/db, or rediss://
// for TLS; query options as go-redis's ParseURL) that honours each call's context
// deadline, which the adapters of this package rely on to stay fast when Redis hangs. A
// client built otherwise must set ContextTimeoutEnabled. NewClient does not connect.
func NewClient(url string) (*goredis.Client, error) {
	opt, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	opt.ContextTimeoutEnabled = true
	if opt.DialerRetries == 0 {
		// Retrying a dial 100ms later does not fit in a 50ms call; the next call dials again.
		opt.DialerRetries = 1
	}
	if opt.MaintNotificationsConfig == nil {
		// Cluster-upgrade notifications are a Redis Cloud feature; not asking saves a
		// round trip per connection.
		opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	}
	return goredis.NewClient(opt), nil
}

// UseLogger sends go-redis's own log lines (a dial that failed, a pool that is full),
// which it otherwise prints to stderr, to log at debug level: the gateway reports Redis
// trouble itself, through health and its warnings. It is process-wide, as go-redis's
// logger is.
func UseLogger(log *slog.Logger) { goredis.SetLogger(logAdapter{log}) }

type logAdapter struct{ log *slog.Logger }

func (a logAdapter) Printf(ctx context.Context, format string, v ...any) {
	a.log.DebugContext(ctx, "go-redis: "+fmt.Sprintf(format, v...))
}

// health tracks whether Redis is failing, and while it is, lets one call through per
// probe interval.
type health struct {
	name     string
	every    time.Duration
	log      *slog.Logger
	degraded atomic.Bool
	next     atomic.Int64 // while degraded: earliest probe, in Unix nanoseconds
}

// try reports whether the caller may call Redis now: always while healthy; while degraded,
// only the first caller after the probe interval has passed.
func (h *health) try() bool {
	if !h.degraded.Load() {
		return true
	}
	now := time.Now().UnixNano()
	next := h.next.Load()
	return now >= next && h.next.CompareAndSwap(next, now+int64(h.every))
}

// fail records a failed call.
func (h *health) fail(err error) {
	h.next.Store(time.Now().Add(h.every).UnixNano())
	if h.degraded.CompareAndSwap(false, true) {
		h.log.Warn("redis unreachable; answering without it", "component", h.name, "err", err)
	}
}

// ok records a successful call.
func (h *health) ok() {
	if h.degraded.Load() && h.degraded.CompareAndSwap(true, false) {
		h.log.Info("redis is back", "component", h.name)
	}
}
