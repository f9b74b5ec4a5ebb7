package postgres_test

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/postgres"
)

// TestReservationsFromTwoPoolsNeverPassTheLimit races two stores on one database, as two
// replicas would: callers reserve one token each against a limit and settle what they got
// at once, on the other store. Exactly limit reservations succeed, however the statements
// of the two pools interleave, and the counter ends with all of them spent.
func TestReservationsFromTwoPoolsNeverPassTheLimit(t *testing.T) {
	t.Parallel()
	dsn := freshDatabase(t)
	stores := []*postgres.Store{open(t, dsn, postgres.Config{MaxConns: 8}), open(t, dsn, postgres.Config{MaxConns: 8})}
	const callers, limit = 200, 50
	for _, key := range []agate.BudgetKey{
		{Tenant: "acme", Day: "2025-03-04"},                    // created by the race
		{Tenant: "acme", Persona: "helper", Day: "2025-03-04"}, // existing before it
	} {
		if key.Persona != "" {
			if err := stores[0].SettleTokens(t.Context(), key, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
		var ok atomic.Int64
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				s, other := stores[i%2], stores[(i+1)%2]
				got, err := s.ReserveTokens(t.Context(), key, 1, limit)
				if err != nil {
					t.Errorf("ReserveTokens %d: %v", i, err)
					return
				}
				if !got {
					return
				}
				ok.Add(1)
				if err := other.SettleTokens(t.Context(), key, 1, 1); err != nil {
					t.Errorf("SettleTokens %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		if got := ok.Load(); got != limit {
			t.Errorf("%+v: %d of %d reservations from two pools succeeded against a limit of %d, want %d",
				key, got, callers, limit, limit)
		}
		for i, s := range stores {
			u, err := s.TokenUsage(t.Context(), key)
			if err != nil || u != (agate.TokenUsage{Spent: limit}) {
				t.Errorf("%+v: TokenUsage from store %d = %+v, %v; want %d spent, none reserved", key, i, u, err, limit)
			}
		}
	}
}
