package openfga_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/openfga"
)

// benchTuples writes a realistic tenant layout into a — 5 tenants of 1 admin and 20
// members, 300 sessions (60 a tenant, each with an owner and one explicit viewer), 10
// tools granted to every member — and returns the checks a gateway would make: readers
// and writers of sessions (owner, viewer, tenant admin, plain member, outsider) and tool
// uses, allows and denies mixed.
func benchTuples(b *testing.B, a openfga.Authorizer) []agate.Tuple {
	b.Helper()
	var tuples, checks []agate.Tuple
	tp := func(u, r, o string) agate.Tuple { return agate.Tuple{User: u, Relation: r, Object: o} }
	for ti := range 5 {
		tenant := fmt.Sprintf("tenant:t%d", ti)
		member := func(i int) string { return fmt.Sprintf("user:t%d-m%d", ti, i) }
		tuples = append(tuples, tp(fmt.Sprintf("user:t%d-admin", ti), "admin", tenant))
		for m := range 20 {
			tuples = append(tuples, tp(member(m), "member", tenant))
		}
		for tool := range 10 {
			obj := fmt.Sprintf("tool:t%d-%d", ti, tool)
			tuples = append(tuples, tp(tenant, "tenant", obj), tp(tenant+"#member", "can_use", obj))
			checks = append(checks, tp(member(tool), "can_use", obj), tp("user:t9-m0", "can_use", obj))
		}
		for s := range 60 {
			obj := fmt.Sprintf("session:t%d-%d", ti, s)
			owner, viewer, plain := member(s%20), member((s+1)%20), member((s+2)%20)
			tuples = append(tuples, tp(tenant, "tenant", obj), tp(owner, "owner", obj), tp(viewer, "viewer", obj))
			checks = append(checks,
				tp(owner, "writer", obj), tp(viewer, "viewer", obj), tp(viewer, "writer", obj),
				tp(fmt.Sprintf("user:t%d-admin", ti), "writer", obj), tp(plain, "viewer", obj),
				tp(fmt.Sprintf("user:t%d-m0", (ti+1)%5), "viewer", obj))
		}
	}
	if err := a.Write(context.Background(), tuples...); err != nil {
		b.Fatal(err)
	}
	return checks
}

func BenchmarkCheckEmbedded(b *testing.B) {
	ctx := context.Background()
	e := newEmbedded(b)
	checks := benchTuples(b, e)
	b.Run("no-cache", func(b *testing.B) {
		i := 0
		for b.Loop() {
			openfga.DropCheckCache(e) // every check solved from the tuples
			if _, err := e.Check(ctx, checks[i%len(checks)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("check-cache", func(b *testing.B) {
		for _, t := range checks { // warm
			e.Check(ctx, t)
		}
		i := 0
		for b.Loop() {
			if _, err := e.Check(ctx, checks[i%len(checks)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("check-cache-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := e.Check(ctx, checks[i%len(checks)]); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}

// BenchmarkCheckCached is the gateway's path: Cached (remembering allows for outages) in
// front of the engine with a warm check cache.
func BenchmarkCheckCached(b *testing.B) {
	ctx := context.Background()
	e := newEmbedded(b)
	checks := benchTuples(b, e)
	c := openfga.WithStale(e, 30*time.Second, nil, nil)
	for _, t := range checks {
		c.Check(ctx, t)
	}
	i := 0
	for b.Loop() {
		if _, err := c.Check(ctx, checks[i%len(checks)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkCheckRemote is one Check over HTTP to `openfga run` (memory datastore, its
// check cache off by default) on loopback.
func BenchmarkCheckRemote(b *testing.B) {
	ctx := context.Background()
	srv := startOpenFGA(b, "memory")
	r := newRemote(b, openfga.RemoteConfig{APIURL: srv.url, Create: true})
	checks := benchTuples(b, r)
	i := 0
	for b.Loop() {
		if _, err := r.Check(ctx, checks[i%len(checks)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
