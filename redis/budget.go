package redis

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agate-gw/agate"
	goredis "github.com/redis/go-redis/v9"
)

// Ledger is the store's token budget counters (the methods of tenant.Ledger and
// turn.Ledger, with their contract): where Budget starts each of its counters from, and
// what it counts on while Redis is down.
type Ledger interface {
	ReserveTokens(ctx context.Context, key agate.BudgetKey, n, limit int64) (bool, error)
	SettleTokens(ctx context.Context, key agate.BudgetKey, reserved, used int64) error
	TokenUsage(ctx context.Context, key agate.BudgetKey) (agate.TokenUsage, error)
}

// budgetTTL is how long a budget counter lives in Redis after it was created: its day,
// however late in the day it began, and the settlements of calls that end the next day.
const budgetTTL = 48 * time.Hour

// reserveTokens is the whole reservation, run atomically by Redis (a script runs alone),
// so concurrent calls on any number of replicas never reserve past the limit.
//
// KEYS[1] is the counter, a hash {reserved, spent}. ARGV[1] is n, ARGV[2] the limit (<= 0:
// none), ARGV[3] the ledger's Spent for the counter, or -1 if the caller has not read it,
// ARGV[4] the TTL of a new counter in seconds.
//
// A missing counter (a new day, or a Redis that restarted or lost it) cannot be decided
// without the ledger: with ARGV[3] = -1 the script returns -1 and the caller runs it again
// with the ledger's Spent, which it then starts from, so that Redis never forgets what the
// day has spent. An existing counter whose spent is below ARGV[3] (spending that went to
// the ledger while this replica could not reach Redis) is brought up to it. Then n is
// reserved if reserved + spent + n <= limit. Returns 1 (reserved), 0 (no room) or -1.
var reserveTokens = goredis.NewScript(`
local sync = tonumber(ARGV[3])
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent'))
if not spent then
  if sync < 0 then return -1 end
  spent = sync
  redis.call('HSET', KEYS[1], 'spent', ARGV[3], 'reserved', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
elseif sync > spent then
  spent = sync
  redis.call('HSET', KEYS[1], 'spent', ARGV[3])
end
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved')) or 0
local limit = tonumber(ARGV[2])
if limit > 0 and reserved + spent + tonumber(ARGV[1]) > limit then return 0 end
redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
return 1
`)

// settleTokens ends a reservation: KEYS[1] the counter; ARGV[1] the tokens reserved,
// ARGV[2] the tokens used. reserved goes down by ARGV[1] (never below 0), spent up by
// ARGV[2]. A missing counter is left missing (the next reservation starts it from the
// ledger, where the caller has recorded the tokens used). Returns 1, or 0 if missing.
var settleTokens = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved')) or 0
redis.call('HINCRBY', KEYS[1], 'reserved', -math.min(reserved, tonumber(ARGV[1])))
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
return 1
`)

// Budget counts token budget reservations in Redis, in front of the store's ledger: a
// tenant.Counter, shared by every replica, that costs one Redis round trip per
// reservation or settlement instead of a database write. It is safe for concurrent use.
// The zero Budget is not usable; call NewBudget.
//
// Each counter (tenant, persona, UTC day) is a hash under
// Prefix+"budget:"+tenant+":"+persona+":"+day (names query-escaped), expiring 48 hours
// after it was created. Budget does not record spent tokens in the ledger: the caller
// (tenant.Budgets) records every settlement there, and Budget starts its counters from
// the ledger's Spent: a new counter, one that Redis lost (restarted), and, the first time
// this process uses each counter and after every Redis outage, one that Redis kept but
// that may have missed spending recorded in the ledger meanwhile (its spent is raised to
// the ledger's). That costs a read of the ledger per counter on those occasions only.
//
// While Redis fails, Budget counts on the ledger (reserve, release, usage), reports
// Degraded, and tries Redis again at most once per Config.ProbeEvery; no method fails
// because of Redis alone. The switches are approximate:
//   - reservations in flight in Redis when it becomes unreachable (or restarts) are not
//     known to the ledger, so until they settle the ledger may admit up to that many
//     tokens more than the budget; their release then lowers the ledger's Reserved
//     (never below 0), possibly freeing another reservation's tokens early;
//   - reservations made in the ledger and settled once Redis is back are freed in Redis
//     (never below 0), and stay in the ledger's Reserved until the day ends, shrinking the
//     budget if Redis fails again that day;
//   - replicas decide each for itself whether Redis is reachable; while some count in
//     Redis and others in the ledger, each side enforces the budget on its own
//     reservations, and Redis learns the ledger's spending when a replica that used it
//     comes back.
type Budget struct {
	client *goredis.Client
	ledger Ledger
	cfg    Config
	health health
	synced atomic.Pointer[syncedSet]
}

// syncedSet holds the counters whose Redis spent has been brought up to the ledger's
// since this process started or Redis came back.
type syncedSet struct {
	keys sync.Map // string → struct{}
	n    atomic.Int64
}

// maxSynced bounds a syncedSet; past it, the set starts again empty (which costs a ledger
// read per counter).
const maxSynced = 100_000

func (s *syncedSet) has(k string) bool { _, ok := s.keys.Load(k); return ok }

func (s *syncedSet) add(k string) bool {
	if _, loaded := s.keys.LoadOrStore(k, struct{}{}); !loaded {
		return s.n.Add(1) <= maxSynced
	}
	return true
}

// DefaultBudgetTimeout bounds one budget call to Redis when Config.Timeout is not set.
const DefaultBudgetTimeout = time.Second

// NewBudget returns a Budget that counts in Redis through client (see NewClient) and on
// ledger (the store) while Redis fails. cfg's Prefix, Timeout, ProbeEvery and Logger apply.
//
// Without cfg.Timeout a call waits up to DefaultBudgetTimeout, not the limiter's 50ms: a
// slow answer is not an outage, and falling back to the ledger splits the counting (each
// side enforces the budget on its own reservations only), which a loaded Redis must not
// cause. Budgets are on a model call's path, not on a request's.
func NewBudget(client *goredis.Client, ledger Ledger, cfg Config) *Budget {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultBudgetTimeout
	}
	cfg = cfg.withDefaults()
	b := &Budget{
		client: client,
		ledger: ledger,
		cfg:    cfg,
		health: health{name: "budget", every: cfg.ProbeEvery, log: cfg.Logger},
	}
	b.synced.Store(&syncedSet{})
	return b
}

// Degraded reports whether Redis is failing, so that budgets are counted on the ledger.
func (b *Budget) Degraded() bool { return b.health.degraded.Load() }

// ReserveTokens adds n to the counter's reserved tokens if reserved + spent + n <= limit
// (limit <= 0: no limit), atomically, and reports whether it did. Errors are the ledger's
// (read to start a counter in Redis, or counting while Redis fails); a negative n gives
// agate.EInvalid.
func (b *Budget) ReserveTokens(ctx context.Context, key agate.BudgetKey, n, limit int64) (bool, error) {
	if n < 0 {
		return false, agate.Errorf(agate.EInvalid, "Cannot reserve a negative number of tokens (%d).", n)
	}
	probing, up := b.try()
	if !up {
		return b.ledger.ReserveTokens(ctx, key, n, limit)
	}
	k := b.key(key)
	synced := b.synced.Load()
	spent, ledgerErr := int64(-1), error(nil)
	if probing || !synced.has(k) {
		spent, ledgerErr = b.ledgerSpent(ctx, key)
	}
	res, err := b.reserve(ctx, k, n, limit, spent)
	if err == nil && res < 0 { // the counter is missing (Redis restarted): start it from the ledger
		if spent, ledgerErr = b.ledgerSpent(ctx, key); ledgerErr == nil {
			res, err = b.reserve(ctx, k, n, limit, spent)
		}
	}
	if err != nil {
		b.failed(ctx, err)
		return b.ledger.ReserveTokens(ctx, key, n, limit)
	}
	b.succeeded(probing)
	if res < 0 {
		return false, fmt.Errorf("redis budget %s: start the counter from the ledger: %w", k, ledgerErr)
	}
	if spent >= 0 && !b.synced.Load().add(k) {
		b.synced.Store(&syncedSet{})
	}
	return res == 1, nil
}

// SettleTokens ends a reservation of reserved tokens that used used: reserved -= reserved
// (never below 0), spent += used. It does not record used in the ledger (see Budget).
// While Redis fails, it releases the reservation in the ledger (Reserved -= reserved).
// Errors are the ledger's; negative numbers give agate.EInvalid.
func (b *Budget) SettleTokens(ctx context.Context, key agate.BudgetKey, reserved, used int64) error {
	if reserved < 0 || used < 0 {
		return agate.Errorf(agate.EInvalid, "Cannot settle a negative number of tokens (%d reserved, %d used).", reserved, used)
	}
	probing, up := b.try()
	if up {
		err := b.settle(ctx, b.key(key), reserved, used)
		if err == nil {
			b.succeeded(probing)
			return nil
		}
		b.failed(ctx, err)
	}
	if reserved == 0 {
		return nil
	}
	return b.ledger.SettleTokens(ctx, key, reserved, 0)
}

// TokenUsage returns the counter: from Redis, or from the ledger when Redis has no counter
// or fails. Errors are the ledger's.
func (b *Budget) TokenUsage(ctx context.Context, key agate.BudgetKey) (agate.TokenUsage, error) {
	probing, up := b.try()
	if up {
		u, ok, err := b.usage(ctx, b.key(key))
		if err == nil {
			b.succeeded(probing)
			if ok {
				return u, nil
			}
		} else {
			b.failed(ctx, err)
		}
	}
	return b.ledger.TokenUsage(ctx, key)
}

// try reports whether to call Redis now (see health.try), and whether that call is a probe
// after a failure.
func (b *Budget) try() (probing, up bool) {
	probing = b.health.degraded.Load()
	return probing, b.health.try()
}

// succeeded records a call to Redis that worked. After a probe, every counter is brought
// up to the ledger again on its next reservation: spending went to the ledger meanwhile.
// The set is replaced before the other callers may use Redis again.
func (b *Budget) succeeded(probing bool) {
	if probing {
		b.synced.Store(&syncedSet{})
	}
	b.health.ok()
}

// failed records a call to Redis that failed; the caller giving up says nothing about Redis.
func (b *Budget) failed(ctx context.Context, err error) {
	if ctx.Err() == nil {
		b.health.fail(err)
	}
}

// ledgerSpent returns the ledger's Spent for key.
func (b *Budget) ledgerSpent(ctx context.Context, key agate.BudgetKey) (int64, error) {
	u, err := b.ledger.TokenUsage(ctx, key)
	if err != nil {
		return -1, err
	}
	return u.Spent, nil
}

// key returns the Redis key of a counter.
func (b *Budget) key(k agate.BudgetKey) string {
	return b.cfg.Prefix + "budget:" + url.QueryEscape(k.Tenant) + ":" + url.QueryEscape(k.Persona) + ":" + url.QueryEscape(k.Day)
}

func (b *Budget) reserve(ctx context.Context, k string, n, limit, spent int64) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	res, err := reserveTokens.Run(ctx, b.client, []string{k}, n, limit, spent, int64(budgetTTL/time.Second)).Int64()
	if err != nil {
		return 0, fmt.Errorf("redis budget reserve %s: %w", k, err)
	}
	return res, nil
}

func (b *Budget) settle(ctx context.Context, k string, reserved, used int64) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	if err := settleTokens.Run(ctx, b.client, []string{k}, reserved, used).Err(); err != nil {
		return fmt.Errorf("redis budget settle %s: %w", k, err)
	}
	return nil
}

// usage reads a counter; ok is false if it does not exist.
func (b *Budget) usage(ctx context.Context, k string) (u agate.TokenUsage, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	vals, err := b.client.HMGet(ctx, k, "reserved", "spent").Result()
	if err != nil {
		return u, false, fmt.Errorf("redis budget usage %s: %w", k, err)
	}
	if len(vals) != 2 || vals[1] == nil {
		return u, false, nil
	}
	u.Reserved, _ = strconv.ParseInt(fmt.Sprint(vals[0]), 10, 64) // missing: 0
	if u.Spent, err = strconv.ParseInt(fmt.Sprint(vals[1]), 10, 64); err != nil {
		return u, false, fmt.Errorf("redis budget usage %s: spent %q is not a number", k, vals[1])
	}
	return u, true, nil
}
