// Package tenanttest holds a fake tenant.Ledger for the tests of Budgets and of its
// counters.
package tenanttest

import (
	"context"
	"fmt"
	"sync"

	"github.com/agate-gw/agate"
)

// Ledger is an in-memory tenant.Ledger that counts its calls and can be made to fail. The
// zero Ledger is empty and ready; it is safe for concurrent use.
type Ledger struct {
	mu       sync.Mutex
	counters map[agate.BudgetKey]agate.TokenUsage
	calls    int
	err      error
}

// ReserveTokens implements tenant.Ledger.
func (l *Ledger) ReserveTokens(ctx context.Context, key agate.BudgetKey, n, limit int64) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.call(ctx); err != nil {
		return false, err
	}
	if n < 0 {
		return false, agate.Errorf(agate.EInvalid, "Cannot reserve a negative number of tokens (%d).", n)
	}
	u := l.counters[key]
	if limit > 0 && u.Reserved+u.Spent+n > limit {
		return false, nil
	}
	u.Reserved += n
	l.counters[key] = u
	return true, nil
}

// SettleTokens implements tenant.Ledger.
func (l *Ledger) SettleTokens(ctx context.Context, key agate.BudgetKey, reserved, used int64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.call(ctx); err != nil {
		return err
	}
	if reserved < 0 || used < 0 {
		return agate.Errorf(agate.EInvalid, "Cannot settle a negative number of tokens (%d reserved, %d used).", reserved, used)
	}
	u := l.counters[key]
	u.Reserved = max(u.Reserved-reserved, 0)
	u.Spent += used
	l.counters[key] = u
	return nil
}

// TokenUsage implements tenant.Ledger.
func (l *Ledger) TokenUsage(ctx context.Context, key agate.BudgetKey) (agate.TokenUsage, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.call(ctx); err != nil {
		return agate.TokenUsage{}, err
	}
	return l.counters[key], nil
}

// call counts a call and returns the error it must fail with, if any. l.mu is held.
func (l *Ledger) call(ctx context.Context) error {
	if l.counters == nil {
		l.counters = map[agate.BudgetKey]agate.TokenUsage{}
	}
	l.calls++
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("tenanttest ledger: %w", err)
	}
	return l.err
}

// Calls returns how many calls the ledger has had.
func (l *Ledger) Calls() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls
}

// Usage returns the counter of key, without counting a call.
func (l *Ledger) Usage(key agate.BudgetKey) agate.TokenUsage {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counters[key]
}

// Set sets the counter of key, without counting a call.
func (l *Ledger) Set(key agate.BudgetKey, u agate.TokenUsage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.counters == nil {
		l.counters = map[agate.BudgetKey]agate.TokenUsage{}
	}
	l.counters[key] = u
}

// Fail makes every later call fail with err; nil makes them succeed again.
func (l *Ledger) Fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.err = err
}
