package openfga_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/openfga"
)

// fakeAuthz answers from a set of allowed tuples, or fails with err when it is set.
type fakeAuthz struct {
	mu    sync.Mutex
	allow map[agate.Tuple]bool
	err   error
}

func newFake() *fakeAuthz { return &fakeAuthz{allow: map[agate.Tuple]bool{}} }

func (f *fakeAuthz) Forget(_ context.Context, object string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for t := range f.allow {
		if t.Object == object {
			delete(f.allow, t)
		}
	}
	return f.err
}

func (f *fakeAuthz) Check(_ context.Context, t agate.Tuple, _ ...agate.Tuple) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return false, f.err
	}
	return f.allow[t], nil
}

func (f *fakeAuthz) Write(_ context.Context, tuples ...agate.Tuple) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	for _, t := range tuples {
		f.allow[t] = true
	}
	return nil
}

func (f *fakeAuthz) Delete(_ context.Context, tuples ...agate.Tuple) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	for _, t := range tuples {
		delete(f.allow, t)
	}
	return nil
}

func (f *fakeAuthz) fail(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// clock is a settable time for Cached.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newCached(t testing.TB, a openfga.Authorizer, ttl time.Duration) (*openfga.Cached, *clock, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	c := openfga.WithStale(a, ttl, testLogger(t), reg)
	clk := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	openfga.SetClock(c, clk.Now)
	return c, clk, reg
}

// decisions returns authz_decisions_total by result.
func decisions(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "authz_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					got[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return got
}

func wantDecisions(t testing.TB, reg *prometheus.Registry, want map[string]float64) {
	t.Helper()
	got := decisions(t, reg)
	for _, r := range []string{"allow", "deny", "stale", "error"} {
		if got[r] != want[r] {
			t.Errorf("authz_decisions_total{result=%q} = %v, want %v (all: %v)", r, got[r], want[r], got)
		}
	}
}

// checkUnavailable asserts that c denies nothing and allows nothing for t: it fails with
// EUnavailable.
func checkUnavailable(t testing.TB, c openfga.Authorizer, tu agate.Tuple) error {
	t.Helper()
	ok, err := c.Check(context.Background(), tu)
	if ok || agate.ErrorCode(err) != agate.EUnavailable {
		t.Fatalf("Check %+v = %v, %v; want an %s error", tu, ok, err, agate.EUnavailable)
	}
	return err
}

var (
	bobWrites = agate.Tuple{User: "user:bob", Relation: "writer", Object: "session:s1"}
	melReads  = agate.Tuple{User: "user:mel", Relation: "viewer", Object: "session:s1"}
	errDown   = errors.New("connection refused")
)

func TestCachedServesRecentAllowsOnlyWithinTTL(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	f.allow[bobWrites] = true
	c, clk, reg := newCached(t, f, 30*time.Second)

	if ok, err := c.Check(ctx, bobWrites); !ok || err != nil {
		t.Fatalf("healthy: Check = %v, %v; want true", ok, err)
	}
	if ok, err := c.Check(ctx, melReads); ok || err != nil {
		t.Fatalf("healthy: Check = %v, %v; want false", ok, err)
	}

	f.fail(agate.Wrap(agate.EUnavailable, errDown, "authorization service unavailable"))
	clk.Add(30 * time.Second) // exactly the TTL: still served
	if ok, err := c.Check(ctx, bobWrites); !ok || err != nil {
		t.Fatalf("down, within TTL: Check = %v, %v; want a stale true", ok, err)
	}
	checkUnavailable(t, c, melReads) // a deny never becomes an allow
	checkUnavailable(t, c, agate.Tuple{User: "user:new", Relation: "viewer", Object: "session:s1"})

	clk.Add(time.Nanosecond)
	err := checkUnavailable(t, c, bobWrites)
	if !errors.Is(err, errDown) {
		t.Errorf("the error %v lost its cause", err)
	}
	wantDecisions(t, reg, map[string]float64{"allow": 1, "deny": 1, "stale": 1, "error": 3})

	f.fail(nil)
	if ok, err := c.Check(ctx, bobWrites); !ok || err != nil {
		t.Fatalf("recovered: Check = %v, %v; want true", ok, err)
	}
}

func TestCachedWrapsUncodedErrorsAsUnavailable(t *testing.T) {
	f := newFake()
	c, _, _ := newCached(t, f, time.Minute)
	f.fail(errDown)
	err := checkUnavailable(t, c, bobWrites)
	if !errors.Is(err, errDown) || agate.ErrorMessage(err) != "authorization service unavailable" {
		t.Errorf("error %v: want the cause kept and the message %q", err, "authorization service unavailable")
	}
}

func TestCachedForgetsAnAllowOnceDenied(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	f.allow[bobWrites] = true
	c, _, _ := newCached(t, f, time.Minute)
	if ok, _ := c.Check(ctx, bobWrites); !ok {
		t.Fatal("want allow")
	}
	delete(f.allow, bobWrites) // revoked elsewhere (another replica)
	if ok, _ := c.Check(ctx, bobWrites); ok {
		t.Fatal("want deny after the revocation")
	}
	f.fail(errDown)
	checkUnavailable(t, c, bobWrites)
}

func TestCachedDeleteForgetsRememberedAllows(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	owner := agate.Tuple{User: "user:bob", Relation: "owner", Object: "session:s1"}
	f.allow[bobWrites] = true // derived from owner in the real model
	c, _, _ := newCached(t, f, time.Minute)
	if ok, _ := c.Check(ctx, bobWrites); !ok {
		t.Fatal("want allow")
	}
	if err := c.Write(ctx, owner); err != nil {
		t.Fatal(err)
	}
	if openfga.Remembered(c) != 1 {
		t.Fatalf("Write forgot remembered allows: %d left, want 1", openfga.Remembered(c))
	}
	if err := c.Delete(ctx, owner); err != nil {
		t.Fatal(err)
	}
	f.fail(errDown)
	checkUnavailable(t, c, bobWrites)
}

func TestCachedReturnsInvalidRequestsUnchanged(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	f.allow[bobWrites] = true
	c, _, reg := newCached(t, f, time.Minute)
	c.Check(ctx, bobWrites)
	invalid := agate.Errorf(agate.EInvalid, "no such relation")
	f.fail(invalid)
	ok, err := c.Check(ctx, bobWrites)
	if ok || err != invalid {
		t.Fatalf("Check = %v, %v; want false, %v", ok, err, invalid)
	}
	wantDecisions(t, reg, map[string]float64{"allow": 1, "error": 1})
}

func TestCachedWithoutTTLServesNothingStale(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	f.allow[bobWrites] = true
	c, _, _ := newCached(t, f, 0)
	c.Check(ctx, bobWrites)
	f.fail(errDown)
	checkUnavailable(t, c, bobWrites)
}

func TestCachedRemembersABoundedNumberOfAllows(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	c, clk, _ := newCached(t, f, time.Minute)
	n := openfga.MaxRemembered + 500
	for i := range n {
		tu := agate.Tuple{User: fmt.Sprintf("user:u%d", i), Relation: "viewer", Object: "session:s1"}
		f.allow[tu] = true
		if i == n/2 {
			clk.Add(2 * time.Minute) // the first half expires
		}
		if ok, err := c.Check(ctx, tu); !ok || err != nil {
			t.Fatalf("Check %d = %v, %v", i, ok, err)
		}
	}
	if got := openfga.Remembered(c); got > openfga.MaxRemembered {
		t.Fatalf("remembers %d allows, more than %d", got, openfga.MaxRemembered)
	}
	// The newest allow survives eviction.
	f.fail(errDown)
	last := agate.Tuple{User: fmt.Sprintf("user:u%d", n-1), Relation: "viewer", Object: "session:s1"}
	if ok, err := c.Check(ctx, last); !ok || err != nil {
		t.Fatalf("newest allow: Check = %v, %v; want a stale true", ok, err)
	}
}

func TestCachedSharesItsMetricOnARegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := openfga.WithStale(newFake(), time.Minute, nil, reg)
	b := openfga.WithStale(newFake(), time.Minute, nil, reg) // a second gateway component: no panic
	a.Check(context.Background(), bobWrites)
	b.Check(context.Background(), bobWrites)
	wantDecisions(t, reg, map[string]float64{"deny": 2})
}

// TestCachedServesRecentAllowsWhenTheEngineStops: the embedded engine, closed, is an
// outage like any other.
func TestCachedServesRecentAllowsWhenTheEngineStops(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t)
	if err := e.Write(ctx, agate.Tuple{User: "user:bob", Relation: "owner", Object: "session:s1"}); err != nil {
		t.Fatal(err)
	}
	c, _, reg := newCached(t, e, time.Minute)
	if ok, err := c.Check(ctx, bobWrites); !ok || err != nil {
		t.Fatalf("Check = %v, %v; want true", ok, err)
	}
	if ok, err := c.Check(ctx, melReads); ok || err != nil {
		t.Fatalf("Check = %v, %v; want false", ok, err)
	}
	if err := c.Close(); err != nil { // closes the engine
		t.Fatal(err)
	}
	if ok, err := c.Check(ctx, bobWrites); !ok || err != nil {
		t.Fatalf("stopped: Check = %v, %v; want a stale true", ok, err)
	}
	checkUnavailable(t, c, melReads)
	wantDecisions(t, reg, map[string]float64{"allow": 1, "deny": 1, "stale": 1, "error": 1})
}
