package redis

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
	goredis "github.com/redis/go-redis/v9"
)

// History reads the conversation as a model sees it; the store implements it (the same
// contract as turn.History).
type History interface {
	// Messages returns up to limit of the session's latest conversation events (user.message,
	// and assistant.final with metadata.status "ok") with Seq <= upTo, oldest first.
	Messages(ctx context.Context, sessionID uuid.UUID, upTo int64, limit int) ([]agate.Event, error)
}

// The cached transcript of a session is one hash, Prefix+"tx:"+session, with two fields:
// "lease", a token unique to one fill, and "data", the entry's JSON. Invalidation is DEL.
//
// A reader that misses installs a lease if there is none (getTx), reads the store, and
// stores the data only if the lease is still the one it saw (fillTx). A DEL between the
// two removes the lease, so a read that raced with an append cannot put its old data back
// after that append's invalidation: the only data ever stored was read from the store
// after the last successful invalidation. Reads never extend the TTL, so an entry is at
// most CacheTTL older than its fill.
var (
	getTx = goredis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'lease', 'data')
if v[2] then return {v[1] or '', v[2]} end
if v[1] then return {v[1]} end
redis.call('HSET', KEYS[1], 'lease', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {ARGV[1]}
`)
	fillTx = goredis.NewScript(`
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)
)

// entry is what is cached for a session: its latest conversation events, oldest first.
type entry struct {
	Events []agate.Event `json:"events"`
	// Complete is set when Events is the session's whole conversation.
	Complete bool `json:"complete"`
}

// answer returns the reply to Messages(upTo, limit) from e, if e holds enough of it.
func (e entry) answer(upTo int64, limit int) ([]agate.Event, bool) {
	n := sort.Search(len(e.Events), func(i int) bool { return e.Events[i].Seq > upTo })
	evs := e.Events[:n]
	switch {
	case len(evs) >= limit:
		return evs[len(evs)-limit:], true
	case e.Complete:
		return evs, true
	}
	return nil, false
}

// Cache is a read-through transcript cache in front of a store's History. The writer
// must call Invalidate after every append to a session (and after deleting or resetting
// it). It is safe for concurrent use. The zero Cache is not usable; call NewCache.
//
// While Redis fails, reads go to the store and invalidations that could not be done are
// remembered in process: the session is read from the store, and its invalidation retried
// on each read, until it succeeds or CacheTTL has passed since it failed (by then any
// entry older than the append has expired). The memory is bounded by MaxDirty sessions;
// beyond it the cache is bypassed for every session for CacheTTL. This protects the readers
// of this process; another replica that still reaches Redis while this one cannot may read
// an entry older than an append done here for up to CacheTTL.
type Cache struct {
	client *goredis.Client
	store  History
	cfg    Config
	health health

	leaseBase string // random per Cache; a lease is leaseBase + a counter
	leases    atomic.Uint64

	mu       sync.Mutex
	dirty    map[uuid.UUID]time.Time // sessions whose invalidation failed, until when
	dirtyAll time.Time               // when dirty overflowed: every session until then
}

// NewCache returns a cache of store's transcripts in Redis through client (see NewClient).
func NewCache(client *goredis.Client, store History, cfg Config) *Cache {
	cfg = cfg.withDefaults()
	return &Cache{
		client:    client,
		store:     store,
		cfg:       cfg,
		health:    health{name: "cache", every: cfg.ProbeEvery, log: cfg.Logger},
		leaseBase: rand.Text(),
		dirty:     make(map[uuid.UUID]time.Time),
	}
}

// Degraded reports whether Redis is failing, so that reads go to the store.
func (c *Cache) Degraded() bool { return c.health.degraded.Load() }

// Messages returns what the store's Messages returns, from Redis when the session's
// latest CacheEvents conversation events are cached and answer the request; otherwise it
// reads the store and caches the session's latest events. Errors are the store's: Redis
// failing only sends the read to the store.
func (c *Cache) Messages(ctx context.Context, sessionID uuid.UUID, upTo int64, limit int) ([]agate.Event, error) {
	if limit <= 0 || !c.clean(ctx, sessionID) || !c.health.try() {
		return c.store.Messages(ctx, sessionID, upTo, limit)
	}
	key := c.cfg.Prefix + "tx:" + sessionID.String()
	lease, data, err := c.get(ctx, key)
	if err != nil {
		c.failed(ctx, err)
		return c.store.Messages(ctx, sessionID, upTo, limit)
	}
	c.health.ok()
	if data != "" {
		var e entry
		if json.Unmarshal([]byte(data), &e) == nil {
			if evs, ok := e.answer(upTo, limit); ok {
				return evs, nil
			}
			return c.store.Messages(ctx, sessionID, upTo, limit) // asks for more than is cached
		}
		// Unreadable data is refilled below under the same lease.
	}

	evs, err := c.store.Messages(ctx, sessionID, math.MaxInt64, c.cfg.CacheEvents)
	if err != nil {
		return nil, err
	}
	e := entry{Events: evs, Complete: len(evs) < c.cfg.CacheEvents}
	if data, err := json.Marshal(e); err == nil { // events decoded from the store always encode
		if err := c.fill(ctx, key, lease, data); err != nil {
			c.failed(ctx, err)
		}
	}
	if out, ok := e.answer(upTo, limit); ok {
		return out, nil
	}
	return c.store.Messages(ctx, sessionID, upTo, limit)
}

// Invalidate drops the session's cached transcript: call it after every append to the
// session, and after deleting or resetting it, once the store has committed. If Redis
// cannot be reached the invalidation is remembered (see Cache), so it never fails. Pass a
// context that is not cancelled with the client's request (context.WithoutCancel), so
// that the invalidation is not cut short.
func (c *Cache) Invalidate(ctx context.Context, sessionID uuid.UUID) {
	if c.health.try() {
		err := c.del(ctx, sessionID)
		if err == nil {
			c.health.ok()
			return
		}
		c.failed(ctx, err)
	}
	c.markDirty(sessionID)
}

// clean reports whether the session's cached transcript can be trusted: yes unless an
// invalidation of it failed, in which case it retries that invalidation.
func (c *Cache) clean(ctx context.Context, sessionID uuid.UUID) bool {
	now := time.Now()
	c.mu.Lock()
	if now.Before(c.dirtyAll) {
		// Which sessions are dirty is not known: drop this one's entry, which also tells
		// whether Redis is back, but trust no entry until dirtyAll has passed.
		c.mu.Unlock()
		if c.health.try() {
			if err := c.del(ctx, sessionID); err != nil {
				c.failed(ctx, err)
			} else {
				c.health.ok()
			}
		}
		return false
	}
	until, dirty := c.dirty[sessionID]
	if dirty && !now.Before(until) {
		delete(c.dirty, sessionID)
		dirty = false
	}
	c.mu.Unlock()
	if !dirty {
		return true
	}
	if !c.health.try() {
		return false
	}
	if err := c.del(ctx, sessionID); err != nil {
		c.failed(ctx, err)
		return false
	}
	c.health.ok()
	c.mu.Lock()
	if c.dirty[sessionID] == until { // not marked again meanwhile
		delete(c.dirty, sessionID)
	}
	c.mu.Unlock()
	return true
}

// markDirty remembers that the session's invalidation failed.
func (c *Cache) markDirty(sessionID uuid.UUID) {
	now := time.Now()
	// An entry filled before the failed invalidation expires within CacheTTL of its fill;
	// a fill still in flight is bounded by its call's timeout.
	until := now.Add(c.cfg.CacheTTL + 2*c.cfg.Timeout + time.Second)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.dirty[sessionID]; !ok && len(c.dirty) >= c.cfg.MaxDirty {
		for id, u := range c.dirty {
			if !now.Before(u) {
				delete(c.dirty, id)
			}
		}
		if len(c.dirty) >= c.cfg.MaxDirty {
			c.dirtyAll = until
			clear(c.dirty)
			return
		}
	}
	c.dirty[sessionID] = until
}

// failed records a failed Redis call, unless it failed because the caller gave up.
func (c *Cache) failed(ctx context.Context, err error) {
	if ctx.Err() == nil {
		c.health.fail(err)
	}
}

// get returns the session's lease and cached data ("" when there is none), installing a
// new lease when there is none.
func (c *Cache) get(ctx context.Context, key string) (lease, data string, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	lease = c.leaseBase + strconv.FormatUint(c.leases.Add(1), 36)
	r, err := getTx.Run(ctx, c.client, []string{key}, lease, c.cfg.CacheTTL.Milliseconds()).StringSlice()
	if err != nil {
		return "", "", fmt.Errorf("redis transcript get: %w", err)
	}
	switch len(r) {
	case 1:
		return r[0], "", nil
	case 2:
		return r[0], r[1], nil
	}
	return "", "", fmt.Errorf("redis transcript get: script returned %d values", len(r))
}

// fill stores data as the session's cached entry if the session's lease is still lease.
func (c *Cache) fill(ctx context.Context, key, lease string, data []byte) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := fillTx.Run(ctx, c.client, []string{key}, lease, data, c.cfg.CacheTTL.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("redis transcript fill: %w", err)
	}
	return nil
}

func (c *Cache) del(ctx context.Context, sessionID uuid.UUID) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := c.client.Del(ctx, c.cfg.Prefix+"tx:"+sessionID.String()).Err(); err != nil {
		return fmt.Errorf("redis transcript invalidate %s: %w", sessionID, err)
	}
	return nil
}
