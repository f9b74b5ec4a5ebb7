package redis_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/redis"
	"github.com/agate-gw/agate/tenant"
	"github.com/agate-gw/agate/tenant/tenanttest"
	"github.com/google/go-cmp/cmp"
	goredis "github.com/redis/go-redis/v9"
)

var (
	_ tenant.Counter = (*redis.Budget)(nil)
	_ redis.Ledger   = tenant.Ledger(nil)
)

// noon is the tests' clock: budgets are counted on its day.
var noon = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

const day = "2026-03-14"

// budgetsOn returns tenant budgets giving every tenant a daily budget of limit tokens,
// counted by a redis.Budget on client in front of ledger.
func budgetsOn(client *goredis.Client, ledger *tenanttest.Ledger, cfg redis.Config, limit int64) (*tenant.Budgets, *redis.Budget) {
	counter := redis.NewBudget(client, ledger, cfg)
	reg := tenant.Static(tenant.Settings{TokensPerDay: limit, PersonaTokensPerDay: map[string]int64{"researcher": limit / 2}})
	return tenant.NewBudgets(reg, counter, ledger, func() time.Time { return noon }, nil), counter
}

func acmeKey() agate.BudgetKey { return agate.BudgetKey{Tenant: "acme", Day: day} }

// counterIn returns the Redis hash of a counter (empty if missing).
func counterIn(t testing.TB, c *goredis.Client, key string) map[string]string {
	t.Helper()
	m, err := c.HGetAll(t.Context(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func wantCounter(t testing.TB, c *goredis.Client, key string, want map[string]string) {
	t.Helper()
	if diff := cmp.Diff(want, counterIn(t, c, key)); diff != "" {
		t.Errorf("Redis hash %s (-want +got):\n%s", key, diff)
	}
}

func wantLedger(t testing.TB, l *tenanttest.Ledger, key agate.BudgetKey, want agate.TokenUsage) {
	t.Helper()
	if diff := cmp.Diff(want, l.Usage(key)); diff != "" {
		t.Errorf("ledger usage of %+v (-want +got):\n%s", key, diff)
	}
}

// reserveN reserves n tokens of acme's budget and reports whether it was granted; any
// error but the budget's fails t.
func reserveN(t testing.TB, b *tenant.Budgets, persona string, n int64) (*tenant.Reservation, bool) {
	t.Helper()
	r, err := b.Reserve(t.Context(), "acme", persona, n)
	if agate.ErrorCode(err) == agate.EBudgetExceeded {
		return nil, false
	}
	if err != nil {
		t.Fatalf("Reserve(%d): %v", n, err)
	}
	return r, true
}

func settle(t testing.TB, b *tenant.Budgets, r *tenant.Reservation, used int64) {
	t.Helper()
	if err := b.Settle(t.Context(), r, used); err != nil {
		t.Fatalf("Settle(%d): %v", used, err)
	}
}

func TestBudgetConcurrentCallsNeverSpendMoreThanTheBudget(t *testing.T) {
	client := sharedClient(t)
	prefix := testPrefix(t, client)
	ledger := &tenanttest.Ledger{}
	b, counter := budgetsOn(client, ledger, testConfig(prefix), 50)

	var reserved atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 200 {
		wg.Go(func() {
			<-start
			r, err := b.Reserve(context.Background(), "acme", "", 1)
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
	if counter.Degraded() {
		t.Fatal("Redis calls failed under concurrency; the ledger counted instead")
	}
	if n := reserved.Load(); n != 50 {
		t.Errorf("%d of 200 concurrent calls reserved a token of a budget of 50, want 50", n)
	}
	wantLedger(t, ledger, acmeKey(), agate.TokenUsage{Spent: 50}) // the record of what was spent
	wantCounter(t, client, prefix+"budget:acme::"+day, map[string]string{"reserved": "0", "spent": "50"})
}

func TestBudgetStartsEachCounterFromTheLedger(t *testing.T) {
	client := sharedClient(t)
	prefix := testPrefix(t, client)
	ledger := &tenanttest.Ledger{}
	ledger.Set(acmeKey(), agate.TokenUsage{Spent: 40}) // spent before Redis knew of the day
	b, _ := budgetsOn(client, ledger, testConfig(prefix), 50)

	r, ok := reserveN(t, b, "", 10)
	if !ok {
		t.Fatal("Reserve(10) refused with 40 of 50 spent")
	}
	if _, ok := reserveN(t, b, "", 1); ok {
		t.Fatal("Reserve(1) granted with 40 of 50 spent and 10 reserved")
	}
	key := prefix + "budget:acme::" + day
	wantCounter(t, client, key, map[string]string{"reserved": "10", "spent": "40"})
	if ttl := client.TTL(t.Context(), key).Val(); ttl <= 47*time.Hour || ttl > 48*time.Hour {
		t.Errorf("TTL of %s = %v, want about 48h", key, ttl)
	}
	settle(t, b, r, 4)
	wantCounter(t, client, key, map[string]string{"reserved": "0", "spent": "44"})
	wantLedger(t, ledger, acmeKey(), agate.TokenUsage{Spent: 44})
}

func TestBudgetRemembersTheDaysSpendingWhenRedisLosesTheCounter(t *testing.T) {
	client := sharedClient(t)
	prefix := testPrefix(t, client)
	ledger := &tenanttest.Ledger{}
	b, _ := budgetsOn(client, ledger, testConfig(prefix), 50)
	r, _ := reserveN(t, b, "", 30)
	settle(t, b, r, 30)

	key := prefix + "budget:acme::" + day
	client.Del(t.Context(), key) // as a Redis restart without persistence would
	r, _ = reserveN(t, b, "", 20)
	if _, ok := reserveN(t, b, "", 1); ok {
		t.Fatal("after Redis lost the counter, the day's 30 spent tokens were forgotten")
	}
	wantCounter(t, client, key, map[string]string{"reserved": "20", "spent": "30"})

	// A settlement of a counter that is gone does not bring it back from zero.
	client.Del(t.Context(), key)
	settle(t, b, r, 20)
	if m := counterIn(t, client, key); len(m) != 0 {
		t.Errorf("settling a lost counter created %v", m)
	}
	if _, ok := reserveN(t, b, "", 1); ok {
		t.Fatal("the 50 spent tokens were forgotten")
	}
}

func TestBudgetPersonaAndTenantCountersAreSeparate(t *testing.T) {
	client := sharedClient(t)
	prefix := testPrefix(t, client)
	ledger := &tenanttest.Ledger{}
	b, counter := budgetsOn(client, ledger, testConfig(prefix), 100) // researcher: 50
	r, _ := reserveN(t, b, "researcher", 50)
	if _, ok := reserveN(t, b, "researcher", 1); ok {
		t.Fatal("the persona's budget of 50 was exceeded")
	}
	if _, ok := reserveN(t, b, "writer", 50); !ok {
		t.Fatal("the tenant's other 50 tokens were refused to another persona")
	}
	settle(t, b, r, 10)
	wantCounter(t, client, prefix+"budget:acme::"+day, map[string]string{"reserved": "50", "spent": "10"})
	wantCounter(t, client, prefix+"budget:acme:researcher:"+day, map[string]string{"reserved": "0", "spent": "10"})

	u, err := counter.TokenUsage(t.Context(), agate.BudgetKey{Tenant: "acme", Persona: "researcher", Day: day})
	if err != nil || u != (agate.TokenUsage{Spent: 10}) {
		t.Errorf("TokenUsage(researcher) = %+v, %v; want 10 spent", u, err)
	}
	// A counter Redis does not have is the ledger's.
	other := agate.BudgetKey{Tenant: "globex", Day: day}
	ledger.Set(other, agate.TokenUsage{Spent: 7})
	if u, err := counter.TokenUsage(t.Context(), other); err != nil || u != (agate.TokenUsage{Spent: 7}) {
		t.Errorf("TokenUsage(globex) = %+v, %v; want the ledger's 7 spent", u, err)
	}
	// Names cannot collide through the separator.
	if ok, err := counter.ReserveTokens(t.Context(), agate.BudgetKey{Tenant: "acme:researcher", Day: day}, 1, 1); !ok || err != nil {
		t.Errorf("tenant \"acme:researcher\" shares a counter with acme's persona researcher: %v %v", ok, err)
	}
}

func TestBudgetCountsOnTheLedgerWhileRedisIsDownAndRecovers(t *testing.T) {
	srv := startServer(t)
	client := newClient(t, srv.URL())
	ledger := &tenanttest.Ledger{}
	b, counter := budgetsOn(client, ledger, testConfig("agatetest:"), 100)
	key := "agatetest:budget:acme::" + day

	r, _ := reserveN(t, b, "", 30)
	settle(t, b, r, 30)
	inFlight, _ := reserveN(t, b, "", 10) // reserved in Redis, settled during the outage
	if counter.Degraded() || counterIn(t, client, key)["spent"] != "30" {
		t.Fatalf("with Redis up: degraded %v, counter %v", counter.Degraded(), counterIn(t, client, key))
	}

	srv.Shutdown(false)
	// The ledger counts: 30 spent there, and what is reserved now. (The 10 in flight in
	// Redis are unknown to it: the documented approximation.)
	r, ok := reserveN(t, b, "", 60)
	if !ok || !counter.Degraded() {
		t.Fatalf("Redis down: Reserve(60) granted %v, degraded %v; want true, true", ok, counter.Degraded())
	}
	wantLedger(t, ledger, acmeKey(), agate.TokenUsage{Reserved: 60, Spent: 30})
	if _, ok := reserveN(t, b, "", 11); ok {
		t.Fatal("Redis down: Reserve(11) granted with 90 of 100 spent or reserved in the ledger")
	}
	settle(t, b, r, 50)
	settle(t, b, inFlight, 5)
	wantLedger(t, ledger, acmeKey(), agate.TokenUsage{Spent: 85})

	srv.Start() // empty: its counters are gone
	eventually(t, "recovered", func() bool {
		counter.TokenUsage(t.Context(), acmeKey())
		return !counter.Degraded()
	})
	// Redis counts again, from the ledger's 85.
	if _, ok := reserveN(t, b, "", 15); !ok {
		t.Fatal("Redis back: Reserve(15) refused with 85 of 100 spent")
	}
	if _, ok := reserveN(t, b, "", 1); ok {
		t.Fatal("Redis back: Reserve(1) granted with 100 of 100 spent or reserved")
	}
	wantCounter(t, client, key, map[string]string{"reserved": "15", "spent": "85"})
	wantLedger(t, ledger, acmeKey(), agate.TokenUsage{Spent: 85}) // the ledger's count is unchanged
}

func TestBudgetCatchesUpWithTheOutagesSpendingWhenRedisKeptItsCounters(t *testing.T) {
	srv := startServer(t)
	client := newClient(t, srv.URL())
	ledger := &tenanttest.Ledger{}
	b, counter := budgetsOn(client, ledger, testConfig("agatetest:"), 100)
	key := "agatetest:budget:acme::" + day

	r, _ := reserveN(t, b, "", 30)
	settle(t, b, r, 30)
	srv.Shutdown(true) // saved: it comes back with spent 30
	r, _ = reserveN(t, b, "", 40)
	settle(t, b, r, 40)
	if !counter.Degraded() {
		t.Fatal("Degraded() = false with Redis down")
	}

	srv.Start()
	eventually(t, "recovered", func() bool {
		counter.TokenUsage(t.Context(), acmeKey())
		return !counter.Degraded()
	})
	if _, ok := reserveN(t, b, "", 31); ok {
		t.Fatal("Redis back with its old counter: Reserve(31) granted with 70 of 100 spent")
	}
	if _, ok := reserveN(t, b, "", 30); !ok {
		t.Fatal("Redis back: Reserve(30) refused with 70 of 100 spent")
	}
	wantCounter(t, client, key, map[string]string{"reserved": "30", "spent": "70"})
}
