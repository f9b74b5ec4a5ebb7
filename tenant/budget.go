package tenant

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/agate-gw/agate"
)

// Ledger keeps token budget counters in the store: the record of tokens spent, and the
// counter of reservations of a gateway without Redis (or while Redis is down). The stores
// implement it (turn.Ledger has the same methods and contract).
type Ledger interface {
	// ReserveTokens adds n to the counter's Reserved, atomically, if Reserved+Spent+n <=
	// limit (limit <= 0: no limit), and reports whether it did. Concurrent calls from any
	// number of processes never reserve past the limit.
	ReserveTokens(ctx context.Context, key agate.BudgetKey, n, limit int64) (bool, error)
	// SettleTokens ends a reservation of reserved tokens that used used: Reserved -=
	// reserved, Spent += used (0 used: a release). Reserved never goes below 0.
	SettleTokens(ctx context.Context, key agate.BudgetKey, reserved, used int64) error
	// TokenUsage returns the counter; zero if it was never used.
	TokenUsage(ctx context.Context, key agate.BudgetKey) (agate.TokenUsage, error)
}

// Counter is where Budgets counts reservations: the Ledger itself, or redis.Budget (Redis
// in front of the ledger). Its methods have the Ledger's contract, with one difference
// when it is not the ledger: Budgets records the spent tokens of every settlement in the
// ledger itself, so the counter must count them (Spent) only where it keeps its own
// counters, never in the ledger.
type Counter interface {
	ReserveTokens(ctx context.Context, key agate.BudgetKey, n, limit int64) (bool, error)
	SettleTokens(ctx context.Context, key agate.BudgetKey, reserved, used int64) error
	TokenUsage(ctx context.Context, key agate.BudgetKey) (agate.TokenUsage, error)
}

// settleTimeout bounds Settle and Release, which do not end with their ctx (see Settle).
const settleTimeout = 10 * time.Second

// Budgets enforces the daily token budgets of tenants and personas (Settings.TokensPerDay,
// Settings.PersonaTokensPerDay): a call reserves the most it may use before it starts, and
// settles what it used when it ends. Since a reservation is atomic in the counter,
// concurrent calls on any number of gateways sharing the counter never reserve more than
// a budget. Days are UTC days.
//
// The budget of a tenant or persona without a limit costs nothing: no counter, no I/O, and
// its tokens are not counted (the turn's usage record is the billing record); if it is
// given a budget during a day, it starts that day from zero. A reservation settles on the
// counters it reserved on, for the day it was made, even if the settings change meanwhile.
//
// Budgets is safe for concurrent use.
type Budgets struct {
	reg      *Registry
	counter  Counter
	ledger   Ledger
	separate bool // the counter is not the ledger: spent tokens are recorded in both
	now      func() time.Time
	log      *slog.Logger
}

// NewBudgets returns budgets read from reg, reserved on counter and recorded in ledger.
// counter is the ledger itself (or nil, the same) or a Counter in front of it, such as
// redis.Budget. now is the clock (nil: time.Now) and log receives what Budgets cannot
// return: a rollback that failed (nil: discard).
func NewBudgets(reg *Registry, counter Counter, ledger Ledger, now func() time.Time, log *slog.Logger) *Budgets {
	if counter == nil {
		counter = ledger
	}
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Budgets{reg: reg, counter: counter, ledger: ledger, separate: !same(counter, ledger), now: now, log: log}
}

// same reports whether a and b are the same value, without panicking on values that are
// not comparable.
func same(a, b any) (eq bool) {
	defer func() {
		if recover() != nil {
			eq = false
		}
	}()
	return a == b
}

// Reservation is what Reserve reserved for one call. Give it back with Settle or Release,
// exactly once; later calls do nothing. It is safe for concurrent use.
type Reservation struct {
	tenant, persona string
	n               int64
	holds           []hold
	done            atomic.Bool
}

// hold is tokens reserved on one counter.
type hold struct {
	key agate.BudgetKey
	n   int64
}

// Tokens returns the number of tokens reserved: what Reserve was asked for, also when no
// budget applied.
func (r *Reservation) Tokens() int64 { return r.n }

// budget is one daily budget that applies to a call.
type budget struct {
	key   agate.BudgetKey
	limit int64
}

func (b budget) String() string {
	if b.key.Persona != "" {
		return fmt.Sprintf("persona %q of tenant %q", b.key.Persona, b.key.Tenant)
	}
	return fmt.Sprintf("tenant %q", b.key.Tenant)
}

// Reserve reserves n tokens for a call of tenant's persona (persona may be "") today (UTC):
// on the tenant's daily budget and, if the persona has a budget of its own, on the
// persona's; on both or on neither. The Reservation is never nil when the error is nil.
//
// A budget that has no room for n more tokens gives an error with code
// agate.EBudgetExceeded, whose message says which budget and when it resets (next midnight
// UTC), and whose agate.RetryAfter is the time until then; when n is more than the whole
// budget, the message says so and there is no RetryAfter. A counter that fails gives its
// error, with code agate.EUnavailable if it had none; ctx ending gives ctx's error. A
// negative n gives agate.EInvalid.
func (b *Budgets) Reserve(ctx context.Context, tenant, persona string, n int64) (*Reservation, error) {
	if n < 0 {
		return nil, agate.Errorf(agate.EInvalid, "Cannot reserve a negative number of tokens (%d).", n)
	}
	r := &Reservation{tenant: tenant, persona: persona, n: n}
	s := b.reg.Get(tenant)
	now := b.now().UTC()
	day := now.Format(time.DateOnly)
	var budgets [2]budget
	applies := budgets[:0]
	if s.TokensPerDay > 0 {
		applies = append(applies, budget{agate.BudgetKey{Tenant: tenant, Day: day}, s.TokensPerDay})
	}
	if limit := s.PersonaTokensPerDay[persona]; persona != "" && limit > 0 {
		applies = append(applies, budget{agate.BudgetKey{Tenant: tenant, Persona: persona, Day: day}, limit})
	}
	for _, bu := range applies {
		ok, err := b.counter.ReserveTokens(ctx, bu.key, n, bu.limit)
		if err == nil && ok {
			r.holds = append(r.holds, hold{bu.key, n})
			continue
		}
		b.rollback(ctx, r)
		if err != nil {
			return nil, b.failed(ctx, fmt.Sprintf("reserve %d tokens of %s for %s", n, bu, bu.key.Day), err)
		}
		return nil, b.exceeded(ctx, bu, n, now)
	}
	return r, nil
}

// rollback releases what r holds after a budget refused or failed.
func (b *Budgets) rollback(ctx context.Context, r *Reservation) {
	if len(r.holds) == 0 {
		return
	}
	r.done.Store(true)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	for _, h := range r.holds {
		if err := b.counter.SettleTokens(ctx, h.key, h.n, 0); err != nil {
			b.log.Error("token reservation not released; the budget stays reduced by it for the day",
				"tenant", h.key.Tenant, "persona", h.key.Persona, "day", h.key.Day, "tokens", h.n, "err", err)
		}
	}
}

// failed wraps a counter's err with what was being done; an error without a code gets
// agate.EUnavailable.
func (b *Budgets) failed(ctx context.Context, doing string, err error) error {
	err = fmt.Errorf("token budget: %s: %w", doing, err)
	if ctx.Err() != nil || agate.ErrorCode(err) != agate.EInternal {
		return err
	}
	return agate.Wrap(agate.EUnavailable, err, "Token budgets cannot be checked right now; retry later.")
}

// exceeded returns the error of a budget that has no room for n more tokens at now.
func (b *Budgets) exceeded(ctx context.Context, bu budget, n int64, now time.Time) error {
	if n > bu.limit {
		return agate.Errorf(agate.EBudgetExceeded,
			"This call may use up to %d tokens, more than the whole daily token budget of %s (%d tokens).", n, bu, bu.limit)
	}
	reset := time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, time.UTC)
	wait := reset.Sub(now)
	detail := ""
	if u, err := b.counter.TokenUsage(ctx, bu.key); err == nil {
		detail = fmt.Sprintf(": %d are spent or reserved by calls in progress, and this call may use up to %d", u.Spent+u.Reserved, n)
	}
	return &agate.Error{
		Code: agate.EBudgetExceeded,
		Message: fmt.Sprintf("The daily token budget of %s (%d tokens) is used up%s. It resets at midnight UTC (%s), in %s.",
			bu, bu.limit, detail, reset.Format(time.RFC3339), roughly(wait)),
		RetryAfter: wait,
	}
}

// roughly formats d for people: "3h12m", "12m", "40s".
func roughly(d time.Duration) string {
	switch {
	case d >= time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	case d >= time.Minute:
		return fmt.Sprintf("%dm", int(d.Round(time.Minute).Minutes()))
	}
	return fmt.Sprintf("%ds", int(d.Round(time.Second).Seconds()))
}

// Settle records that the call of r used used tokens (more or less than reserved) and
// frees the reservation. The used tokens are always recorded in the ledger, the store's
// record, whichever counter reserved them. Only the first Settle or Release of a
// Reservation does anything; later ones return nil, also when the first failed (so that a
// retry can never count tokens twice).
//
// Settle is meant to run when the call has ended, also when it ended because ctx did: it
// keeps ctx's values but not its cancellation, and gives itself 10 seconds. Errors are
// the counters' and the ledger's, joined; a reservation that could not be freed stays on
// its budget until the day ends.
func (b *Budgets) Settle(ctx context.Context, r *Reservation, used int64) error {
	if r == nil || !r.done.CompareAndSwap(false, true) || len(r.holds) == 0 {
		return nil
	}
	used = max(used, 0)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	var errs []error
	for _, h := range r.holds {
		if b.separate && used > 0 {
			// The ledger first: a counter that lost its state (Redis restarted) starts
			// again from the ledger's Spent.
			if err := b.ledger.SettleTokens(ctx, h.key, 0, used); err != nil {
				errs = append(errs, fmt.Errorf("token budget: record %d tokens used by %s in the ledger: %w", used, budget{key: h.key}, err))
			}
		}
		if err := b.counter.SettleTokens(ctx, h.key, h.n, used); err != nil {
			errs = append(errs, fmt.Errorf("token budget: settle %d tokens reserved, %d used, of %s: %w", h.n, used, budget{key: h.key}, err))
		}
	}
	return errors.Join(errs...)
}

// Release frees the reservation of a call that failed or was cancelled before using any
// tokens: Settle with 0 used.
func (b *Budgets) Release(ctx context.Context, r *Reservation) error {
	return b.Settle(ctx, r, 0)
}
