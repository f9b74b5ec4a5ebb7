package openfga_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/openfga"
)

var (
	_ openfga.Authorizer = (*openfga.Engine)(nil)
	_ openfga.Authorizer = (*openfga.Remote)(nil)
	_ openfga.Authorizer = (*openfga.Cached)(nil)
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func newEmbedded(t testing.TB) *openfga.Engine {
	t.Helper()
	e, err := openfga.NewEmbedded(context.Background(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// TestEmbeddedModelIsConfModel: the package embeds a copy of conf/authz.fga.
func TestEmbeddedModelIsConfModel(t *testing.T) {
	conf, err := os.ReadFile("../conf/authz.fga")
	if err != nil {
		t.Fatal(err)
	}
	embedded, err := os.ReadFile("authz.fga")
	if err != nil {
		t.Fatal(err)
	}
	if string(conf) != string(embedded) {
		t.Fatal("openfga/authz.fga differs from conf/authz.fga: run `go generate ./openfga/`")
	}
	// Cached forgets nothing on Write because no relation excludes (`but not`).
	for i, line := range strings.Split(string(conf), "\n") {
		if l := strings.TrimSpace(line); !strings.HasPrefix(l, "#") && strings.Contains(l, "but not") {
			t.Errorf("conf/authz.fga:%d uses `but not`: Cached.Write must then forget remembered allows", i+1)
		}
	}
}

func TestEmbeddedAuthorizer(t *testing.T) {
	testAuthorizer(t, newEmbedded(t))
}

func TestCachedEmbeddedAuthorizer(t *testing.T) {
	testAuthorizer(t, openfga.WithStale(newEmbedded(t), 30*time.Second, nil, nil))
}

// TestEngineRevocationIsImmediate: the engine's check cache never answers from before a
// change, so a deleted grant is denied on the very next check.
func TestEngineRevocationIsImmediate(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t)
	grant := agate.Tuple{User: "user:vic", Relation: "viewer", Object: "session:r1"}
	read := grant
	for i := range 3 {
		if err := e.Write(ctx, grant); err != nil {
			t.Fatal(err)
		}
		for range 2 { // the second answer comes from the check cache
			if ok, err := e.Check(ctx, read); err != nil || !ok {
				t.Fatalf("round %d: after Write: Check = %v, %v; want true", i, ok, err)
			}
		}
		if err := e.Delete(ctx, grant); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if ok, err := e.Check(ctx, read); err != nil || ok {
				t.Fatalf("round %d: after Delete: Check = %v, %v; want false", i, ok, err)
			}
		}
	}
}

func TestEngineClosedIsUnavailable(t *testing.T) {
	e := newEmbedded(t)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err := e.Check(context.Background(), agate.Tuple{User: "user:a", Relation: "viewer", Object: "session:s"})
	if got := agate.ErrorCode(err); got != agate.EUnavailable {
		t.Fatalf("Check after Close: code %q (%v), want %q", got, err, agate.EUnavailable)
	}
	err = e.Write(context.Background(), agate.Tuple{User: "user:a", Relation: "owner", Object: "session:s"})
	if got := agate.ErrorCode(err); got != agate.EUnavailable {
		t.Fatalf("Write after Close: code %q (%v), want %q", got, err, agate.EUnavailable)
	}
}

// testAuthorizer checks the semantics of conf/authz.fga on a: every Authorizer passes it.
// It uses objects of its own, so a may hold other tuples.
func testAuthorizer(t *testing.T, a openfga.Authorizer) {
	ctx := context.Background()
	tp := func(user, rel, obj string) agate.Tuple { return agate.Tuple{User: user, Relation: rel, Object: obj} }
	write := func(t *testing.T, tuples ...agate.Tuple) {
		t.Helper()
		if err := a.Write(ctx, tuples...); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	expect := func(t *testing.T, want bool, user, rel, obj string) {
		t.Helper()
		got, err := a.Check(ctx, tp(user, rel, obj))
		if err != nil {
			t.Fatalf("Check %s#%s@%s: %v", obj, rel, user, err)
		}
		if got != want {
			t.Errorf("Check %s#%s@%s = %v, want %v", obj, rel, user, got, want)
		}
	}

	// Tenants acme and globex; session s1 of acme, owned by bob, shared with vic.
	write(t,
		tp("user:ann", "admin", "tenant:acme"),
		tp("user:mel", "member", "tenant:acme"),
		tp("user:bob", "member", "tenant:acme"),
		tp("user:vic", "member", "tenant:acme"),
		tp("user:gus", "admin", "tenant:globex"),
		tp("user:gil", "member", "tenant:globex"),
		tp("tenant:acme", "tenant", "session:s1"),
		tp("user:bob", "owner", "session:s1"),
		tp("user:vic", "viewer", "session:s1"),
	)

	t.Run("roles", func(t *testing.T) {
		for _, c := range []struct {
			user        string
			read, write bool
			why         string
		}{
			{"user:bob", true, true, "owner"},
			{"user:vic", true, false, "explicit viewer"},
			{"user:ann", true, true, "admin of the session's tenant"},
			{"user:mel", false, false, "plain member of the tenant, not granted"},
			{"user:gus", false, false, "admin of another tenant"},
			{"user:gil", false, false, "member of another tenant"},
			{"user:nobody", false, false, "stranger"},
		} {
			t.Run(c.why, func(t *testing.T) {
				expect(t, c.read, c.user, "viewer", "session:s1")
				expect(t, c.write, c.user, "writer", "session:s1")
			})
		}
	})

	t.Run("an admin is a member", func(t *testing.T) {
		expect(t, true, "user:ann", "member", "tenant:acme")
		expect(t, false, "user:mel", "admin", "tenant:acme")
		expect(t, false, "user:gus", "member", "tenant:acme")
	})

	t.Run("admins of a tenant read and write all its sessions", func(t *testing.T) {
		write(t, tp("tenant:acme", "tenant", "session:s9"), tp("user:mel", "owner", "session:s9"))
		expect(t, true, "user:ann", "viewer", "session:s9")
		expect(t, true, "user:ann", "writer", "session:s9")
		expect(t, false, "user:bob", "viewer", "session:s9")
		expect(t, false, "user:gus", "writer", "session:s9")
	})

	t.Run("a role carried by the credential counts for one check", func(t *testing.T) {
		role := tp("user:mel", "admin", "tenant:acme") // mel's token says admin; nothing stored
		for _, rel := range []string{"viewer", "writer"} {
			got, err := a.Check(ctx, tp("user:mel", rel, "session:s1"), role)
			if err != nil || !got {
				t.Errorf("Check session:s1#%s@user:mel with the admin role = %v, %v; want true", rel, got, err)
			}
		}
		expect(t, false, "user:mel", "writer", "session:s1") // and only for that check
		other := tp("user:mel", "admin", "tenant:globex")
		if got, err := a.Check(ctx, tp("user:mel", "viewer", "session:s1"), other); err != nil || got {
			t.Errorf("admin of another tenant reads session:s1 = %v, %v; want false", got, err)
		}
	})

	t.Run("forget removes every relationship of an object", func(t *testing.T) {
		write(t, tp("tenant:acme", "tenant", "session:s7"), tp("user:bob", "owner", "session:s7"), tp("user:vic", "viewer", "session:s7"))
		f, ok := a.(interface {
			Forget(context.Context, string) error
		})
		if !ok {
			t.Skip("no Forget")
		}
		if err := f.Forget(ctx, "session:s7"); err != nil {
			t.Fatal(err)
		}
		expect(t, false, "user:bob", "writer", "session:s7")
		expect(t, false, "user:vic", "viewer", "session:s7")
		expect(t, false, "user:ann", "viewer", "session:s7") // the tenant link went too
		expect(t, true, "user:bob", "writer", "session:s1")  // others stay
	})

	t.Run("a session shared with every member of its tenant", func(t *testing.T) {
		write(t,
			tp("tenant:acme", "tenant", "session:s2"),
			tp("user:bob", "owner", "session:s2"),
			tp("tenant:acme#member", "viewer", "session:s2"),
		)
		expect(t, true, "user:mel", "viewer", "session:s2")
		expect(t, false, "user:mel", "writer", "session:s2")
		expect(t, true, "user:ann", "viewer", "session:s2") // admin, hence member
		expect(t, false, "user:gil", "viewer", "session:s2")
		expect(t, false, "user:gus", "viewer", "session:s2")
	})

	t.Run("tools", func(t *testing.T) {
		write(t,
			tp("tenant:acme", "tenant", "tool:search"),
			tp("user:gil", "can_use", "tool:search"),
			tp("tenant:acme#member", "can_use", "tool:search"),
			tp("tenant:acme", "tenant", "tool:shell"),
			tp("user:ann", "can_use", "tool:shell"),
		)
		expect(t, true, "user:gil", "can_use", "tool:search") // direct grant, other tenant
		expect(t, true, "user:mel", "can_use", "tool:search") // via tenant:acme#member
		expect(t, true, "user:ann", "can_use", "tool:search") // admin, hence member
		expect(t, false, "user:gus", "can_use", "tool:search")
		expect(t, true, "user:ann", "can_use", "tool:shell")
		expect(t, false, "user:mel", "can_use", "tool:shell") // a tool's tenant grants nothing by itself
		expect(t, false, "user:ann", "can_use", "tool:unknown")
	})

	t.Run("Write is idempotent", func(t *testing.T) {
		owner := tp("user:bob", "owner", "session:s3")
		write(t, owner)
		write(t, owner)
		write(t, owner, owner, tp("tenant:acme", "tenant", "session:s3")) // a repeat within a call too
		expect(t, true, "user:bob", "writer", "session:s3")
	})

	t.Run("Delete removes and is idempotent", func(t *testing.T) {
		viewer := tp("user:vic", "viewer", "session:s4")
		owner := tp("user:bob", "owner", "session:s4")
		write(t, viewer, owner)
		expect(t, true, "user:vic", "viewer", "session:s4")
		expect(t, true, "user:bob", "writer", "session:s4")
		for range 2 {
			if err := a.Delete(ctx, viewer, owner); err != nil {
				t.Fatalf("Delete: %v", err)
			}
		}
		expect(t, false, "user:vic", "viewer", "session:s4")
		expect(t, false, "user:bob", "viewer", "session:s4")
		expect(t, false, "user:bob", "writer", "session:s4")
		if err := a.Delete(ctx, tp("user:nobody", "owner", "session:never")); err != nil {
			t.Fatalf("Delete of a tuple that never existed: %v", err)
		}
	})

	t.Run("more tuples than one request carries", func(t *testing.T) {
		var many []agate.Tuple
		for i := range 250 {
			many = append(many, tp(fmt.Sprintf("user:u%d", i), "owner", "session:s5"))
		}
		write(t, many...)
		expect(t, true, "user:u0", "writer", "session:s5")
		expect(t, true, "user:u249", "writer", "session:s5")
		if err := a.Delete(ctx, many...); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		expect(t, false, "user:u249", "writer", "session:s5")
	})

	t.Run("an unknown object is denied, not an error", func(t *testing.T) {
		expect(t, false, "user:bob", "viewer", "session:does-not-exist")
		expect(t, false, "user:never-seen", "can_use", "tool:does-not-exist")
	})

	t.Run("invalid tuples are EInvalid errors", func(t *testing.T) {
		for _, c := range []agate.Tuple{
			tp("", "viewer", "session:s1"),
			tp("user:bob", "", "session:s1"),
			tp("user:bob", "viewer", ""),
			tp("user:bob", "viewer", "widget:w1"),    // no such type
			tp("user:bob", "launches", "session:s1"), // no such relation
			tp("tenant:acme", "owner", "session:s1"), // owner takes users only (Write)
		} {
			_, err := a.Check(ctx, c)
			if c.User == "tenant:acme" {
				err = a.Write(ctx, c)
			}
			if got := agate.ErrorCode(err); got != agate.EInvalid {
				t.Errorf("%+v: code %q (%v), want %q", c, got, err, agate.EInvalid)
			}
		}
		// Nothing of a refused Write is kept.
		err := a.Write(ctx, tp("user:zed", "owner", "session:s6"), tp("user:zed", "launches", "session:s6"))
		if got := agate.ErrorCode(err); got != agate.EInvalid {
			t.Fatalf("Write with an invalid tuple: code %q (%v), want %q", got, err, agate.EInvalid)
		}
		expect(t, false, "user:zed", "writer", "session:s6")
	})
}

// TestEngineChecksDuringWrites: checks and changes from many goroutines at once; each
// goroutine sees its own writes and deletes at once.
func TestEngineChecksDuringWrites(t *testing.T) {
	ctx := context.Background()
	e := newEmbedded(t)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 25 {
				owner := agate.Tuple{User: fmt.Sprintf("user:g%d", g), Relation: "owner", Object: fmt.Sprintf("session:g%d-%d", g, i)}
				write := agate.Tuple{User: owner.User, Relation: "writer", Object: owner.Object}
				if err := e.Write(ctx, owner); err != nil {
					t.Error(err)
					return
				}
				if ok, err := e.Check(ctx, write); !ok || err != nil {
					t.Errorf("after Write: Check %+v = %v, %v", write, ok, err)
					return
				}
				if err := e.Delete(ctx, owner); err != nil {
					t.Error(err)
					return
				}
				if ok, err := e.Check(ctx, write); ok || err != nil {
					t.Errorf("after Delete: Check %+v = %v, %v", write, ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
}
