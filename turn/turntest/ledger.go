package turntest

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/turn"
)

// The cases of turn.Ledger.

func usage(t *testing.T, s turn.Store, key agate.BudgetKey) agate.TokenUsage {
	t.Helper()
	u, err := s.TokenUsage(t.Context(), key)
	if err != nil {
		t.Fatalf("TokenUsage(%+v): %v", key, err)
	}
	return u
}

func reserve(t *testing.T, s turn.Store, key agate.BudgetKey, n, limit int64, want bool) {
	t.Helper()
	got, err := s.ReserveTokens(t.Context(), key, n, limit)
	if err != nil {
		t.Fatalf("ReserveTokens(%+v, %d, %d): %v", key, n, limit, err)
	}
	if got != want {
		t.Errorf("ReserveTokens(%+v, %d, %d) = %v, want %v", key, n, limit, got, want)
	}
}

func settle(t *testing.T, s turn.Store, key agate.BudgetKey, reserved, used int64) {
	t.Helper()
	if err := s.SettleTokens(t.Context(), key, reserved, used); err != nil {
		t.Fatalf("SettleTokens(%+v, %d, %d): %v", key, reserved, used, err)
	}
}

const day = "2025-03-04"

func testReserveUpToTheLimit(t *testing.T, s turn.Store) {
	key := agate.BudgetKey{Tenant: acme, Day: day}
	diff(t, "usage of a counter never used", agate.TokenUsage{}, usage(t, s, key))
	reserve(t, s, key, 30, 100, true)
	reserve(t, s, key, 70, 100, true) // exactly the limit
	reserve(t, s, key, 1, 100, false)
	reserve(t, s, key, 0, 100, true) // nothing more still fits
	diff(t, "usage at the limit", agate.TokenUsage{Reserved: 100}, usage(t, s, key))
	reserve(t, s, key, 50, 150, true) // a higher limit leaves room again
	reserve(t, s, key, 1, 150, false)
	diff(t, "usage at the higher limit", agate.TokenUsage{Reserved: 150}, usage(t, s, key))

	fresh := agate.BudgetKey{Tenant: acme, Day: "2025-03-05"}
	reserve(t, s, fresh, 101, 100, false) // more than the limit on a counter never used
	diff(t, "usage after a refused first reservation", agate.TokenUsage{}, usage(t, s, fresh))
}

func testReserveWithoutLimit(t *testing.T, s turn.Store) {
	key := agate.BudgetKey{Tenant: acme, Persona: "helper", Day: day}
	reserve(t, s, key, 1_000_000_000, 0, true)
	reserve(t, s, key, 1_000_000_000, -1, true)
	reserve(t, s, key, 5, 0, true)
	diff(t, "usage without a limit", agate.TokenUsage{Reserved: 2_000_000_005}, usage(t, s, key))
}

func testSettleTokens(t *testing.T, s turn.Store) {
	key := agate.BudgetKey{Tenant: acme, Day: day}
	reserve(t, s, key, 60, 100, true)
	reserve(t, s, key, 41, 100, false)
	settle(t, s, key, 60, 40) // the call used fewer tokens than it reserved
	diff(t, "usage after settling", agate.TokenUsage{Spent: 40}, usage(t, s, key))
	reserve(t, s, key, 60, 100, true) // what was reserved and not used is free again
	reserve(t, s, key, 1, 100, false)

	settle(t, s, key, 60, 0) // a release: the call failed
	diff(t, "usage after a release", agate.TokenUsage{Spent: 40}, usage(t, s, key))
	reserve(t, s, key, 60, 100, true)
	settle(t, s, key, 80, 75) // more than was reserved: Reserved stops at 0
	diff(t, "usage after settling more than was reserved", agate.TokenUsage{Spent: 115}, usage(t, s, key))
	reserve(t, s, key, 0, 100, false) // spent past the limit: nothing fits, not even 0
	reserve(t, s, key, 10, 0, true)   // but without a limit it does
	diff(t, "usage past the limit", agate.TokenUsage{Reserved: 10, Spent: 115}, usage(t, s, key))

	// Settling a counter that was never reserved on (another replica reserved in Redis, say)
	// records what was spent.
	other := agate.BudgetKey{Tenant: globex, Persona: "helper", Day: day}
	settle(t, s, other, 20, 7)
	diff(t, "usage settled without a reservation", agate.TokenUsage{Spent: 7}, usage(t, s, other))
}

func testConcurrentReservations(t *testing.T, s turn.Store) {
	const callers, limit = 200, 50
	key := agate.BudgetKey{Tenant: acme, Persona: "helper", Day: day}
	var ok atomic.Int64
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			got, err := s.ReserveTokens(t.Context(), key, 1, limit)
			if err != nil {
				t.Errorf("ReserveTokens %d: %v", i, err)
				return
			}
			if got {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if got := ok.Load(); got != limit {
		t.Errorf("%d of %d concurrent reservations of 1 token succeeded against a limit of %d, want %d",
			got, callers, limit, limit)
	}
	diff(t, "usage after concurrent reservations", agate.TokenUsage{Reserved: limit}, usage(t, s, key))
}

func testTokenCountersAreSeparate(t *testing.T, s turn.Store) {
	keys := []agate.BudgetKey{
		{Tenant: acme, Day: day},
		{Tenant: acme, Persona: "helper", Day: day},
		{Tenant: acme, Persona: "writer", Day: day},
		{Tenant: acme, Day: "2025-03-05"},
		{Tenant: globex, Day: day},
		{Tenant: globex, Persona: "helper", Day: day},
	}
	for i, key := range keys {
		n := int64(10 * (i + 1))
		reserve(t, s, key, n, n, true) // each counter fills its own limit
		reserve(t, s, key, 1, n, false)
	}
	settle(t, s, keys[1], 20, 5)
	for i, key := range keys {
		want := agate.TokenUsage{Reserved: int64(10 * (i + 1))}
		if i == 1 {
			want = agate.TokenUsage{Spent: 5}
		}
		diff(t, fmt.Sprintf("usage of %+v", key), want, usage(t, s, key))
	}
}

func testNegativeReservationRefused(t *testing.T, s turn.Store) {
	key := agate.BudgetKey{Tenant: acme, Day: day}
	reserve(t, s, key, 10, 100, true)
	ok, err := s.ReserveTokens(t.Context(), key, -5, 100)
	wantCode(t, "ReserveTokens of -5 tokens", err, agate.EInvalid)
	if ok {
		t.Error("ReserveTokens of -5 tokens reported a reservation")
	}
	_, err = s.ReserveTokens(t.Context(), key, -1, 0)
	wantCode(t, "ReserveTokens of -1 token without a limit", err, agate.EInvalid)
	diff(t, "usage after refused reservations", agate.TokenUsage{Reserved: 10}, usage(t, s, key))
}
