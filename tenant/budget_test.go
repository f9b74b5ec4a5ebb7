package tenant_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/sqlite"
	"github.com/agate-gw/agate/tenant"
	"github.com/agate-gw/agate/tenant/tenanttest"
	"github.com/agate-gw/agate/turn"
	"github.com/google/go-cmp/cmp"
)

var (
	_ tenant.Ledger  = (*tenanttest.Ledger)(nil)
	_ tenant.Ledger  = (*sqlite.Store)(nil)
	_ tenant.Ledger  = turn.Ledger(nil) // the stores' contract is the same
	_ tenant.Counter = tenant.Ledger(nil)
)

// clock is a fixed time of day: 20:47:30 UTC, 3h12m30s before midnight.
var clock = time.Date(2026, 3, 14, 20, 47, 30, 0, time.UTC)

const today = "2026-03-14"

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

// budgets returns Budgets giving every tenant settings s, counted on ledger itself, at
// clock.
func budgets(s tenant.Settings, ledger tenant.Ledger) *tenant.Budgets {
	return tenant.NewBudgets(tenant.Static(s), nil, ledger, fixed(clock), nil)
}

func tenantKey(tenant string) agate.BudgetKey { return agate.BudgetKey{Tenant: tenant, Day: today} }

func personaKey(tenant, persona string) agate.BudgetKey {
	return agate.BudgetKey{Tenant: tenant, Persona: persona, Day: today}
}

func mustReserve(t testing.TB, b *tenant.Budgets, tenant, persona string, n int64) *tenant.Reservation {
	t.Helper()
	r, err := b.Reserve(t.Context(), tenant, persona, n)
	if err != nil {
		t.Fatalf("Reserve(%s, %q, %d): %v", tenant, persona, n, err)
	}
	return r
}

func wantUsage(t testing.TB, l *tenanttest.Ledger, key agate.BudgetKey, want agate.TokenUsage) {
	t.Helper()
	if diff := cmp.Diff(want, l.Usage(key)); diff != "" {
		t.Errorf("usage of %+v (-want +got):\n%s", key, diff)
	}
}

// race runs 200 concurrent calls that each reserve 1 token and settle 1, against a budget
// of 50, and returns how many were reserved.
func race(t *testing.T, b *tenant.Budgets, tenant string) int64 {
	t.Helper()
	var reserved atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 200 {
		wg.Go(func() {
			<-start
			r, err := b.Reserve(context.Background(), tenant, "", 1)
			if agate.ErrorCode(err) == agate.EBudgetExceeded {
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			reserved.Add(1)
			if err := b.Settle(context.Background(), r, 1); err != nil {
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	return reserved.Load()
}

func TestConcurrentCallsNeverSpendMoreThanTheBudget(t *testing.T) {
	s := tenant.Settings{TokensPerDay: 50}
	t.Run("fake ledger", func(t *testing.T) {
		l := &tenanttest.Ledger{}
		if n := race(t, budgets(s, l), "acme"); n != 50 {
			t.Errorf("%d of 200 concurrent calls reserved a token of a budget of 50, want 50", n)
		}
		wantUsage(t, l, tenantKey("acme"), agate.TokenUsage{Spent: 50})
	})
	t.Run("sqlite store", func(t *testing.T) {
		store, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "agate.db"), sqlite.Config{Relaxed: true})
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		n := race(t, budgets(s, store), "acme")
		u, err := store.TokenUsage(t.Context(), tenantKey("acme"))
		if err != nil {
			t.Fatal(err)
		}
		if n > 50 || u.Spent > 50 || u.Spent != n || u.Reserved != 0 {
			t.Errorf("%d calls reserved, usage %+v; want at most 50, all settled", n, u)
		}
		if n < 50 {
			t.Errorf("%d of 200 calls reserved a token of a budget of 50, want 50", n)
		}
	})
}

func TestPersonaBudgetIsSpentWithinTheTenants(t *testing.T) {
	l := &tenanttest.Ledger{}
	b := budgets(tenant.Settings{TokensPerDay: 100, PersonaTokensPerDay: map[string]int64{"researcher": 30}}, l)

	r := mustReserve(t, b, "acme", "researcher", 30)
	wantUsage(t, l, tenantKey("acme"), agate.TokenUsage{Reserved: 30})
	wantUsage(t, l, personaKey("acme", "researcher"), agate.TokenUsage{Reserved: 30})

	// The persona's budget is used up; the refusal releases the tenant's reservation.
	_, err := b.Reserve(t.Context(), "acme", "researcher", 1)
	if agate.ErrorCode(err) != agate.EBudgetExceeded {
		t.Fatalf("Reserve over the persona's budget = %v, want %s", err, agate.EBudgetExceeded)
	}
	wantUsage(t, l, tenantKey("acme"), agate.TokenUsage{Reserved: 30})

	// Other personas (without a budget of their own) and the tenant share the rest.
	mustReserve(t, b, "acme", "writer", 50)
	mustReserve(t, b, "acme", "", 20)
	wantUsage(t, l, personaKey("acme", "writer"), agate.TokenUsage{}) // no counter of its own
	_, err = b.Reserve(t.Context(), "acme", "writer", 1)
	if agate.ErrorCode(err) != agate.EBudgetExceeded {
		t.Fatalf("Reserve over the tenant's budget = %v, want %s", err, agate.EBudgetExceeded)
	}

	// Settling the researcher's call frees room in both.
	if err := b.Settle(t.Context(), r, 10); err != nil {
		t.Fatal(err)
	}
	wantUsage(t, l, tenantKey("acme"), agate.TokenUsage{Reserved: 70, Spent: 10})
	wantUsage(t, l, personaKey("acme", "researcher"), agate.TokenUsage{Spent: 10})
	mustReserve(t, b, "acme", "researcher", 20)
}

func TestOverBudgetErrorSaysWhichBudgetAndWhenItResets(t *testing.T) {
	l := &tenanttest.Ledger{}
	b := budgets(tenant.Settings{TokensPerDay: 1000, PersonaTokensPerDay: map[string]int64{"researcher": 100}}, l)
	mustReserve(t, b, "acme", "", 800)
	mustReserve(t, b, "acme", "researcher", 60)

	tests := []struct {
		persona string
		n       int64
		want    string
	}{
		{"", 150, `The daily token budget of tenant "acme" (1000 tokens) is used up: 860 are spent or reserved by calls in progress, and this call may use up to 150. It resets at midnight UTC (2026-03-15T00:00:00Z), in 3h13m.`},
		{"researcher", 41, `The daily token budget of persona "researcher" of tenant "acme" (100 tokens) is used up: 60 are spent or reserved by calls in progress, and this call may use up to 41. It resets at midnight UTC (2026-03-15T00:00:00Z), in 3h13m.`},
	}
	for _, tt := range tests {
		_, err := b.Reserve(t.Context(), "acme", tt.persona, tt.n)
		var e *agate.Error
		if !errors.As(err, &e) {
			t.Fatalf("Reserve(%q, %d) = %v, want an *agate.Error", tt.persona, tt.n, err)
		}
		if e.Code != agate.EBudgetExceeded || e.Message != tt.want || e.RetryAfter != 3*time.Hour+12*time.Minute+30*time.Second {
			t.Errorf("Reserve(%q, %d):\n got: %s %q RetryAfter %v\nwant: %s %q RetryAfter 3h12m30s",
				tt.persona, tt.n, e.Code, e.Message, e.RetryAfter, agate.EBudgetExceeded, tt.want)
		}
	}
	// Nothing was left reserved by the refusals.
	wantUsage(t, l, tenantKey("acme"), agate.TokenUsage{Reserved: 860})
}

func TestACallLargerThanTheWholeBudgetIsRefusedForGood(t *testing.T) {
	b := budgets(tenant.Settings{TokensPerDay: 1000}, &tenanttest.Ledger{})
	_, err := b.Reserve(t.Context(), "acme", "", 4096)
	want := `This call may use up to 4096 tokens, more than the whole daily token budget of tenant "acme" (1000 tokens).`
	if agate.ErrorCode(err) != agate.EBudgetExceeded || agate.ErrorMessage(err) != want || agate.RetryAfter(err) != 0 {
		t.Errorf("Reserve(4096) = %v (RetryAfter %v), want %s %q and no RetryAfter", err, agate.RetryAfter(err), agate.EBudgetExceeded, want)
	}
}

func TestUnlimitedBudgetsCostNoIO(t *testing.T) {
	l := &tenanttest.Ledger{}
	b := budgets(tenant.Settings{PersonaTokensPerDay: map[string]int64{"researcher": 0}}, l)
	for _, persona := range []string{"", "researcher", "writer"} {
		r := mustReserve(t, b, "acme", persona, 1_000_000)
		if r.Tokens() != 1_000_000 {
			t.Errorf("Tokens() = %d, want 1000000", r.Tokens())
		}
		if err := b.Settle(t.Context(), r, 5); err != nil {
			t.Fatal(err)
		}
		if err := b.Release(t.Context(), mustReserve(t, b, "acme", persona, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if n := l.Calls(); n != 0 {
		t.Errorf("the ledger had %d calls for unlimited budgets, want 0", n)
	}

	// A tenant budget without a persona budget: the tenant's counter only.
	b = budgets(tenant.Settings{TokensPerDay: 10}, l)
	if err := b.Settle(t.Context(), mustReserve(t, b, "acme", "writer", 5), 5); err != nil {
		t.Fatal(err)
	}
	if n := l.Calls(); n != 2 {
		t.Errorf("the ledger had %d calls for a reservation and a settlement, want 2", n)
	}
}

func TestSettleRecordsWhatTheCallUsed(t *testing.T) {
	l := &tenanttest.Ledger{}
	b := budgets(tenant.Settings{TokensPerDay: 100}, l)
	more := mustReserve(t, b, "acme", "", 10)
	less := mustReserve(t, b, "acme", "", 40)
	if err := b.Settle(t.Context(), more, 25); err != nil { // more than reserved: it is what was spent
		t.Fatal(err)
	}
	wantUsage(t, l, tenantKey("acme"), agate.TokenUsage{Reserved: 40, Spent: 25})
	if err := b.Settle(t.Context(), less, 5); err != nil {
		t.Fatal(err)
	}
	wantUsage(t, l, tenantKey("acme"), agate.TokenUsage{Spent: 30})
	mustReserve(t, b, "acme", "", 70)
}

func TestReleaseFreesTheReservation(t *testing.T) {
	l := &tenanttest.Ledger{}
	b := budgets(tenant.Settings{TokensPerDay: 100, PersonaTokensPerDay: map[string]int64{"researcher": 50}}, l)
	r := mustReserve(t, b, "acme", "researcher", 50)
	if _, err := b.Reserve(t.Context(), "acme", "researcher", 1); agate.ErrorCode(err) != agate.EBudgetExceeded {
		t.Fatalf("Reserve = %v, want %s", err, agate.EBudgetExceeded)
	}
	if err := b.Release(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	wantUsage(t, l, tenantKey("acme"), agate.TokenUsage{})
	wantUsage(t, l, personaKey("acme", "researcher"), agate.TokenUsage{})
	mustReserve(t, b, "acme", "researcher", 50)
}

func TestSettleAndReleaseCountOnce(t *testing.T) {
	l := &tenanttest.Ledger{}
	b := budgets(tenant.Settings{TokensPerDay: 100}, l)
	r := mustReserve(t, b, "acme", "", 10)
	for range 3 {
		if err := b.Settle(t.Context(), r, 7); err != nil {
			t.Fatal(err)
		}
		if err := b.Release(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	wantUsage(t, l, tenantKey("acme"), agate.TokenUsage{Spent: 7})
	if n := l.Calls(); n != 2 {
		t.Errorf("%d ledger calls, want 2 (one reservation, one settlement)", n)
	}
	if err := b.Settle(t.Context(), nil, 1); err != nil {
		t.Errorf("Settle(nil) = %v, want nil", err)
	}
}

func TestSettledUsageIsRecordedInTheLedgerWhenAnotherCounterReserves(t *testing.T) {
	counter, ledger := &tenanttest.Ledger{}, &tenanttest.Ledger{}
	b := tenant.NewBudgets(tenant.Static(tenant.Settings{TokensPerDay: 100, PersonaTokensPerDay: map[string]int64{"researcher": 50}}),
		counter, ledger, fixed(clock), nil)
	r := mustReserve(t, b, "acme", "researcher", 40)
	wantUsage(t, counter, tenantKey("acme"), agate.TokenUsage{Reserved: 40})
	wantUsage(t, ledger, tenantKey("acme"), agate.TokenUsage{}) // reservations are the counter's
	if err := b.Settle(t.Context(), r, 30); err != nil {
		t.Fatal(err)
	}
	for _, key := range []agate.BudgetKey{tenantKey("acme"), personaKey("acme", "researcher")} {
		wantUsage(t, counter, key, agate.TokenUsage{Spent: 30})
		wantUsage(t, ledger, key, agate.TokenUsage{Spent: 30})
	}
	// A release writes nothing to the ledger.
	calls := ledger.Calls()
	if err := b.Release(t.Context(), mustReserve(t, b, "acme", "", 10)); err != nil {
		t.Fatal(err)
	}
	if ledger.Calls() != calls {
		t.Errorf("a release made %d ledger calls, want none", ledger.Calls()-calls)
	}
}

func TestAFailingCounterGivesUnavailableAndLeavesNothingReserved(t *testing.T) {
	ledger := &tenanttest.Ledger{}
	counter := &failOn{Ledger: ledger, persona: "researcher", err: errors.New("disk on fire")}
	b := tenant.NewBudgets(tenant.Static(tenant.Settings{TokensPerDay: 100, PersonaTokensPerDay: map[string]int64{"researcher": 50}}),
		counter, ledger, fixed(clock), nil)
	_, err := b.Reserve(t.Context(), "acme", "researcher", 10)
	if agate.ErrorCode(err) != agate.EUnavailable {
		t.Fatalf("Reserve with a failing counter = %v, want %s", err, agate.EUnavailable)
	}
	if !errors.Is(err, counter.err) {
		t.Errorf("Reserve = %v, want it to wrap the counter's error", err)
	}
	wantUsage(t, ledger, tenantKey("acme"), agate.TokenUsage{}) // the tenant's reservation was rolled back

	// An error with a code keeps it.
	counter.err = agate.Errorf(agate.EInvalid, "Bad.")
	if _, err := b.Reserve(t.Context(), "acme", "researcher", 10); agate.ErrorCode(err) != agate.EInvalid {
		t.Errorf("Reserve = %v, want %s", err, agate.EInvalid)
	}
	if _, err := b.Reserve(t.Context(), "acme", "", -1); agate.ErrorCode(err) != agate.EInvalid {
		t.Errorf("Reserve(-1) = %v, want %s", err, agate.EInvalid)
	}
}

// failOn is a counter whose calls on persona's counters fail.
type failOn struct {
	*tenanttest.Ledger
	persona string
	err     error
}

func (f *failOn) ReserveTokens(ctx context.Context, key agate.BudgetKey, n, limit int64) (bool, error) {
	if key.Persona == f.persona {
		return false, f.err
	}
	return f.Ledger.ReserveTokens(ctx, key, n, limit)
}

func TestSettleOutlivesTheCallersContext(t *testing.T) {
	l := &tenanttest.Ledger{}
	b := budgets(tenant.Settings{TokensPerDay: 100}, l)
	r := mustReserve(t, b, "acme", "", 10)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the client went away; the call ended
	if err := b.Settle(ctx, r, 4); err != nil {
		t.Fatal(err)
	}
	wantUsage(t, l, tenantKey("acme"), agate.TokenUsage{Spent: 4})
}

func TestAReservationSettlesOnTheDayItWasMade(t *testing.T) {
	l := &tenanttest.Ledger{}
	now := time.Date(2026, 3, 14, 23, 59, 59, 0, time.UTC)
	b := tenant.NewBudgets(tenant.Static(tenant.Settings{TokensPerDay: 10}), nil, l, func() time.Time { return now }, nil)
	r := mustReserve(t, b, "acme", "", 10)
	now = now.Add(time.Second) // midnight: a new budget
	next := mustReserve(t, b, "acme", "", 10)
	if err := b.Settle(t.Context(), r, 3); err != nil {
		t.Fatal(err)
	}
	if err := b.Settle(t.Context(), next, 2); err != nil {
		t.Fatal(err)
	}
	wantUsage(t, l, tenantKey("acme"), agate.TokenUsage{Spent: 3})
	wantUsage(t, l, agate.BudgetKey{Tenant: "acme", Day: "2026-03-15"}, agate.TokenUsage{Spent: 2})
}

func TestBudgetsFollowTheRegistry(t *testing.T) {
	r, path, _ := watched(t, budgetFile(10))
	l := &tenanttest.Ledger{}
	b := tenant.NewBudgets(r, nil, l, fixed(clock), nil)
	mustReserve(t, b, "acme", "", 10)
	if _, err := b.Reserve(t.Context(), "globex", "", 1_000); err != nil {
		t.Errorf("a tenant without an entry has the defaults (no budget): %v", err)
	}
	writeFile(t, filepath.Dir(path), "tenants.yaml", budgetFile(20))
	waitFor(t, "reloaded", budgetIs(r, 20))
	mustReserve(t, b, "acme", "", 10)
}
