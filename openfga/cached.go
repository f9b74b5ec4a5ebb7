package openfga

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agate-gw/agate"
)

// Authorizer checks and changes relationship tuples. *Engine and *Remote implement it.
type Authorizer interface {
	// Check reports whether t.User has t.Relation to t.Object, counting the contextual
	// tuples as if they were stored (for this check only: roles a credential carries).
	// Errors are EInvalid for a tuple the model cannot express and EUnavailable when there
	// is no answer.
	Check(ctx context.Context, t agate.Tuple, contextual ...agate.Tuple) (bool, error)
	// Write stores tuples; one that exists already is not an error.
	Write(ctx context.Context, tuples ...agate.Tuple) error
	// Delete removes tuples; one that does not exist is not an error.
	Delete(ctx context.Context, tuples ...agate.Tuple) error
	// Forget deletes every tuple of object.
	Forget(ctx context.Context, object string) error
}

// maxRemembered bounds the allow decisions a Cached remembers.
const maxRemembered = 100_000

// Cached is an Authorizer that keeps answering while the one it wraps cannot: it remembers
// each allow decision with its time, and when a check fails, an allow for the same tuple
// seen within the TTL is the answer (a stale hit). Otherwise the failure is an EUnavailable
// error — never a deny, so an outage is a 503 for the client, not a 403 or a 401.
//
// A deny is never remembered, and it erases a remembered allow of the same tuple. Delete
// erases every remembered allow, since deleting one tuple may revoke many derived ones;
// Write erases none, since in conf/authz.fga (no `but not`) a new tuple only grants.
//
// Its methods may be called concurrently.
type Cached struct {
	a   Authorizer
	ttl time.Duration
	log *slog.Logger
	now func() time.Time

	decisions *prometheus.CounterVec

	mu     sync.Mutex
	allows map[decision]time.Time // last allow of each tuple (with its contextual tuples)
	down   bool                   // the last call to a failed: log transitions only
}

// WithStale returns a Cached in front of a that serves allows seen within ttl while a is
// failing; ttl ≤ 0 serves none. It counts decisions in authz_decisions_total{result=
// "allow|deny|stale|error"} on reg (which may be nil), and logs when a starts and stops
// failing.
func WithStale(a Authorizer, ttl time.Duration, log *slog.Logger, reg prometheus.Registerer) *Cached {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cached{
		a:   a,
		ttl: ttl,
		log: log,
		now: time.Now,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "authz_decisions_total",
			Help: "Authorization decisions, by result: allow, deny, stale (an allow remembered from before an outage), error (no decision).",
		}, []string{"result"}),
		allows: make(map[decision]time.Time),
	}
	for _, r := range []string{"allow", "deny", "stale", "error"} {
		c.decisions.WithLabelValues(r) // export zeros
	}
	if reg != nil {
		if err := reg.Register(c.decisions); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				panic(err) // a conflicting metric of the same name: a programming error
			}
			c.decisions = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	return c
}

// Check asks the wrapped Authorizer. When it fails with anything but EInvalid, an allow of
// t seen within the TTL is returned as (true, nil); otherwise the error is returned with
// code EUnavailable (its cause kept in the chain). EInvalid errors are returned unchanged:
// the tuple is wrong, not the server.
func (c *Cached) Check(ctx context.Context, t agate.Tuple, contextual ...agate.Tuple) (bool, error) {
	ok, err := c.a.Check(ctx, t, contextual...)
	now := c.now()
	d := decide(t, contextual)
	if err == nil {
		c.mu.Lock()
		if ok {
			c.remember(d, now)
		} else {
			delete(c.allows, d)
		}
		c.recovered()
		c.mu.Unlock()
		if ok {
			c.decisions.WithLabelValues("allow").Inc()
		} else {
			c.decisions.WithLabelValues("deny").Inc()
		}
		return ok, nil
	}
	if agate.ErrorCode(err) == agate.EInvalid {
		c.decisions.WithLabelValues("error").Inc()
		return false, err
	}

	c.mu.Lock()
	seen, found := c.allows[d]
	stale := found && c.ttl > 0 && now.Sub(seen) <= c.ttl
	if !c.down {
		c.down = true
		c.log.Warn("authorization service failing; serving recent allows", "error", err, "stale_ttl", c.ttl)
	}
	c.mu.Unlock()
	if stale {
		c.decisions.WithLabelValues("stale").Inc()
		return true, nil
	}
	c.decisions.WithLabelValues("error").Inc()
	if agate.ErrorCode(err) == agate.EUnavailable {
		return false, err
	}
	return false, agate.Wrap(agate.EUnavailable, err, "authorization service unavailable")
}

// Write passes tuples to the wrapped Authorizer.
func (c *Cached) Write(ctx context.Context, tuples ...agate.Tuple) error {
	return c.a.Write(ctx, tuples...)
}

// Delete passes tuples to the wrapped Authorizer and forgets every remembered allow, even
// when it fails (it may have deleted some).
func (c *Cached) Delete(ctx context.Context, tuples ...agate.Tuple) error {
	err := c.a.Delete(ctx, tuples...)
	c.mu.Lock()
	clear(c.allows)
	c.mu.Unlock()
	return err
}

// Close closes the wrapped Authorizer if it has a Close method.
// Forget deletes every tuple of object and forgets every remembered allow.
func (c *Cached) Forget(ctx context.Context, object string) error {
	err := c.a.Forget(ctx, object)
	c.mu.Lock()
	clear(c.allows)
	c.mu.Unlock()
	return err
}

// Ping tells whether the authorizer answers, by asking it about a tuple whose answer does
// not matter; it is not counted as a decision.
func (c *Cached) Ping(ctx context.Context) error {
	_, err := c.a.Check(ctx, agate.Tuple{User: "user:health-probe", Relation: "viewer", Object: "session:health-probe"})
	return err
}

func (c *Cached) Close() error {
	if cl, ok := c.a.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}

// remember records an allow of t at now. At capacity it first drops the allows older than
// the TTL, then, if none was, an arbitrary hundredth of them. c.mu is held.
func (c *Cached) remember(t decision, now time.Time) {
	if _, ok := c.allows[t]; !ok && len(c.allows) >= maxRemembered {
		for k, seen := range c.allows {
			if now.Sub(seen) > c.ttl {
				delete(c.allows, k)
			}
		}
		for k := range c.allows {
			if len(c.allows) < maxRemembered-maxRemembered/100 {
				break
			}
			delete(c.allows, k) // map order is unspecified: a random-ish victim
		}
	}
	c.allows[t] = now
}

// recovered logs the end of an outage. c.mu is held.
func (c *Cached) recovered() {
	if c.down {
		c.down = false
		c.log.Info("authorization service answering again")
	}
}

// decision names a check: its tuple and its contextual tuples.
type decision struct {
	agate.Tuple
	contextual string
}

func decide(t agate.Tuple, contextual []agate.Tuple) decision {
	d := decision{Tuple: t}
	for _, c := range contextual {
		d.contextual += c.User + "\x00" + c.Relation + "\x00" + c.Object + "\x00"
	}
	return d
}
