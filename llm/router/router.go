// Package router is a model (turn.Model) in front of several providers. It sends each
// request along a named chain of provider models — an alias such as "default" →
// [openai/gpt-4.1, anthropic/claude-sonnet-4] — retrying a target while nothing has reached
// the client yet, falling back to the next target, and skipping targets whose circuit
// breaker is open. There is one breaker per (provider, model).
//
// What happens to a failed attempt depends on its error code and on whether any delta had
// already been passed to emit (the "first byte"):
//
//	outcome of an attempt                     retry same target  fall back  breaker
//	success                                   -                  -          success
//	any error after the first byte            no                 no (1)     by code, as below
//	caller's ctx done, or emit failed         no                 no         not counted
//	upstream_error, stream_truncated          yes (2)            yes        failure
//	upstream_rate_limited                     yes (2)(3)         yes        not counted (4)
//	upstream_timeout                          no (6)             yes        failure
//	upstream_auth_failed                      no                 yes        failure (5)
//	invalid_request and any other code        no                 no         not counted
//	breaker open (or its probes busy)         -                  yes, at once
//
//	(1) the client already has part of the reply; another attempt would repeat it. The
//	    error and the partial Reply are returned at once.
//	(2) up to Config.Retries times, after a jittered exponential backoff, or after the
//	    provider's Retry-After when it sent one (whichever is longer).
//	(3) a Retry-After over Config.MaxRetryAfter, or one that would outlast the ctx
//	    deadline, moves on to the next target without waiting.
//	(4) a rate limit says the provider is busy, not broken; opening the breaker for it
//	    would shut out the requests its quota still admits.
//	(5) a refused key stays refused: an open breaker lets later requests skip the target
//	    at once until a half-open probe finds it fixed.
//	(6) a provider that let a whole timeout pass would most likely let the next one pass
//	    too; the next target is the better bet.
//
// "The first byte" is a delta passed to a non-nil emit: a caller that passes nil (it
// answers only once the reply is whole) has received nothing, so any failure is retried.
//
// When every target failed, Generate returns the last error. When every target was
// skipped because its breaker is open, it returns an agate.EUpstream error whose
// RetryAfter is the time until the soonest breaker lets a probe through.
package router

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/agate-gw/agate"
	"github.com/prometheus/client_golang/prometheus"
)

// Model generates one assistant message; it is turn.Model. Router is one and calls others.
type Model interface {
	Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error)
}

// Target is one model of one provider.
type Target struct {
	Provider string // a key of the providers given to New
	Model    string // the model name the provider knows
}

// String returns "provider/model", the form ParseTarget reads.
func (t Target) String() string { return t.Provider + "/" + t.Model }

// ParseTarget reads "provider/model", such as "openai/gpt-4.1". The provider ends at the
// first slash; the model may contain more ("openrouter/meta-llama/llama-3-70b").
func ParseTarget(s string) (Target, error) {
	p, m, ok := strings.Cut(strings.TrimSpace(s), "/")
	p, m = strings.TrimSpace(p), strings.TrimSpace(m)
	if !ok || p == "" || m == "" {
		return Target{}, fmt.Errorf("model target %q is not of the form provider/model", s)
	}
	return Target{Provider: p, Model: m}, nil
}

// Defaults of Config.
const (
	DefaultAlias         = "default"
	DefaultRetries       = 2
	DefaultBackoffBase   = 200 * time.Millisecond
	DefaultBackoffMax    = 5 * time.Second
	DefaultMaxRetryAfter = 10 * time.Second

	DefaultBreakerFailures = 5
	DefaultBreakerOpenFor  = 30 * time.Second
	DefaultBreakerProbes   = 1
)

// maxAdHoc bounds the breakers made for models that clients name directly (see
// Router.Generate), since those names come from requests. Past it, such models share one
// breaker per provider, reported with model "*".
const maxAdHoc = 100

// Config tunes a Router. Zero fields take the defaults named on them; only Routes is
// required.
type Config struct {
	// Routes maps an alias to its chain of targets, tried in order, such as
	// "default" → [openai/gpt-4.1, anthropic/claude-sonnet-4]. Every chain needs at least
	// one target, and Routes must hold the Default alias.
	Routes map[string][]Target
	// Default is the alias used when a request names no model. Default DefaultAlias.
	Default string
	// Retries is the number of extra attempts on a target before falling back, made only
	// while nothing has reached the client. 0 means DefaultRetries; a negative value
	// means none.
	Retries int
	// BackoffBase and BackoffMax shape the wait before a retry: BackoffBase doubled per
	// retry, capped at BackoffMax, of which a random half is taken off ("equal jitter").
	// Defaults DefaultBackoffBase and DefaultBackoffMax.
	BackoffBase, BackoffMax time.Duration
	// MaxRetryAfter is the longest Retry-After a provider may ask for that is waited out
	// before retrying the same target; a longer one moves on to the next target at once.
	// Default DefaultMaxRetryAfter.
	MaxRetryAfter time.Duration
	// Breaker tunes the circuit breaker of every (provider, model).
	Breaker BreakerConfig
}

// BreakerConfig tunes a circuit breaker. Zero fields take the defaults named on them.
type BreakerConfig struct {
	// Failures is the number of consecutive failed attempts that opens the breaker.
	// Default DefaultBreakerFailures.
	Failures uint32
	// OpenFor is how long an open breaker refuses requests before it half-opens.
	// Default DefaultBreakerOpenFor.
	OpenFor time.Duration
	// HalfOpenProbes is the number of requests a half-open breaker lets through; that
	// many successes in a row close it, one failure opens it again.
	// Default DefaultBreakerProbes.
	HalfOpenProbes uint32
}

// Router routes model requests to providers. It is safe for concurrent use and starts no
// goroutines.
type Router struct {
	providers   map[string]Model
	routes      map[string][]Target
	def         string
	defProvider string // the provider of the default chain's first target
	retries     int
	base, max   time.Duration
	maxRA       time.Duration
	bcfg        BreakerConfig
	m           *routerMetrics

	// sleep waits d or until ctx is done; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error

	mu       sync.Mutex
	breakers map[Target]*breaker
	adHoc    int // breakers made for models named directly by requests
}

// New returns a router over providers (keyed by the provider names that targets use) and
// registers its metrics on reg (none when reg is nil). It fails if a chain is empty or
// names a provider that is not given, if Routes has no Default alias, or if the metrics
// cannot be registered.
func New(providers map[string]Model, cfg Config, reg prometheus.Registerer) (*Router, error) {
	r := &Router{
		providers: maps.Clone(providers),
		routes:    make(map[string][]Target, len(cfg.Routes)),
		def:       orDefault(cfg.Default, DefaultAlias),
		retries:   cfg.Retries,
		base:      orDefault(cfg.BackoffBase, DefaultBackoffBase),
		max:       orDefault(cfg.BackoffMax, DefaultBackoffMax),
		maxRA:     orDefault(cfg.MaxRetryAfter, DefaultMaxRetryAfter),
		bcfg: BreakerConfig{
			Failures:       orDefault(cfg.Breaker.Failures, DefaultBreakerFailures),
			OpenFor:        orDefault(cfg.Breaker.OpenFor, DefaultBreakerOpenFor),
			HalfOpenProbes: orDefault(cfg.Breaker.HalfOpenProbes, DefaultBreakerProbes),
		},
		sleep:    sleep,
		breakers: make(map[Target]*breaker),
	}
	switch {
	case r.retries == 0:
		r.retries = DefaultRetries
	case r.retries < 0:
		r.retries = 0
	}
	r.max = max(r.max, r.base)
	for name, p := range r.providers {
		if p == nil {
			return nil, fmt.Errorf("router: provider %q is nil", name)
		}
	}
	for alias, chain := range cfg.Routes {
		if alias == "" {
			return nil, errors.New("router: a route has an empty alias")
		}
		if len(chain) == 0 {
			return nil, fmt.Errorf("router: route %q has no targets", alias)
		}
		for _, t := range chain {
			if t.Model == "" {
				return nil, fmt.Errorf("router: route %q: target %q names no model", alias, t)
			}
			if _, ok := r.providers[t.Provider]; !ok {
				return nil, fmt.Errorf("router: route %q: target %q names provider %q, which is not configured", alias, t, t.Provider)
			}
		}
		r.routes[alias] = slices.Clone(chain)
	}
	chain, ok := r.routes[r.def]
	if !ok {
		return nil, fmt.Errorf("router: no route for the default alias %q", r.def)
	}
	r.defProvider = chain[0].Provider
	r.m = newRouterMetrics(r)
	for _, chain := range r.routes {
		for _, t := range chain {
			r.breakerFor(t, false)
		}
	}
	if reg != nil {
		if err := r.m.register(reg); err != nil {
			return nil, fmt.Errorf("router: metrics: %w", err)
		}
	}
	return r, nil
}

// orDefault returns v, or def when v is not positive.
func orDefault[T int | uint32 | time.Duration | string](v, def T) T {
	var zero T
	if v <= zero {
		return def
	}
	return v
}

// Models returns the model names requests may use: the aliases, then the configured
// targets as "provider/model", each list sorted.
func (r *Router) Models() []string {
	aliases := slices.Sorted(maps.Keys(r.routes))
	var targets []string
	for _, chain := range r.routes {
		for _, t := range chain {
			targets = append(targets, t.String())
		}
	}
	slices.Sort(targets)
	return append(aliases, slices.Compact(targets)...)
}

// Targets returns the "provider/model" targets a request for model would be sent to, in
// order: what a policy on model use must judge (a name or an alias says little).
func (r *Router) Targets(model string) []string {
	_, chain := r.resolve(model)
	out := make([]string, len(chain))
	for i, t := range chain {
		out[i] = t.Provider + "/" + t.Model
	}
	return out
}

// resolve returns the alias (or "" for a direct request) and chain of a requested model:
//   - "" is the Default alias;
//   - an alias is its chain;
//   - "provider/model" with a configured provider is that one target;
//   - any other name is a model of the default chain's first provider, so that clients
//     can ask for a concrete model ("gpt-4.1-mini") with no route of its own.
func (r *Router) resolve(model string) (string, []Target) {
	if model == "" {
		model = r.def
	}
	if chain, ok := r.routes[model]; ok {
		return model, chain
	}
	if t, err := ParseTarget(model); err == nil {
		if _, ok := r.providers[t.Provider]; ok {
			return "", []Target{t}
		}
	}
	return "", []Target{{Provider: r.defProvider, Model: model}}
}

// Generate sends req to the chain that req.Model names (see the package documentation for
// retries, fallbacks and breakers), with req.Model set to each target's model in turn,
// and streams the answering target's deltas to emit (a nil emit discards them).
//
// req.Model may be "" (the Default alias), an alias, "provider/model" for a configured
// provider, or any other model name, which is sent to the provider of the Default chain's
// first target; such a direct request has a chain of one target and its own breaker.
//
// It returns the answering provider's Reply; Reply.Model is the model as that provider
// names it (the target's model if it names none). On failure it returns the error of the
// last attempt (a cancelled ctx gives ctx.Err()) and, if the failure came after the first
// delta, the partial Reply; if every target's breaker was open, an agate.EUpstream error
// whose agate.RetryAfter is the time until the soonest one half-opens.
func (r *Router) Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error) {
	if err := ctx.Err(); err != nil {
		return agate.Reply{}, err
	}
	alias, chain := r.resolve(req.Model)
	name := req.Model
	if name == "" {
		name = r.def
	}
	var (
		last      attempt
		tried     bool
		reopensIn time.Duration = -1
	)
	for i, t := range chain {
		if i > 0 {
			r.m.fallbacks.WithLabelValues(alias, chain[i-1].String(), t.String()).Inc()
		}
		a := r.try(ctx, t, req, emit)
		switch a.next {
		case done:
			return a.reply, a.err
		case skipped:
			if reopensIn < 0 || a.reopensIn < reopensIn {
				reopensIn = a.reopensIn
			}
		case fallBack:
			last, tried = a, true
		}
	}
	if tried {
		return last.reply, last.err
	}
	secs := max(1, int((reopensIn+time.Second-1)/time.Second))
	return agate.Reply{}, &agate.Error{
		Code:       agate.EUpstream,
		Message:    fmt.Sprintf("All providers for model %q are failing; try again in %ds.", name, secs),
		RetryAfter: max(reopensIn, time.Second),
	}
}

// next says what Generate does after a target.
type next int

const (
	done     next = iota // return the attempt's reply and error
	fallBack             // the target failed: go on to the next one
	skipped              // the target's breaker is open: go on to the next one
)

// attempt is the outcome of trying one target.
type attempt struct {
	reply     agate.Reply
	err       error
	next      next
	reopensIn time.Duration // skipped: until the breaker lets a probe through
}

// try sends req to target t, retrying while the table in the package documentation
// allows.
func (r *Router) try(ctx context.Context, t Target, req agate.ModelRequest, emit func(agate.Delta) error) attempt {
	b := r.breakerFor(t, true)
	p := r.providers[t.Provider]
	req.Model = t.Model
	var last attempt
	for n := 0; ; n++ {
		report, err := b.cb.Allow()
		if err != nil {
			if n == 0 {
				return attempt{next: skipped, reopensIn: b.reopensIn()}
			}
			return last // it opened while we retried
		}
		var sent bool // something reached the caller: a nil emit never sends, so never stops retries
		var emitErr error
		forward := func(d agate.Delta) error {
			if emit == nil {
				return nil
			}
			sent = true
			if err := emit(d); err != nil {
				emitErr = err
				return err
			}
			return nil
		}
		reply, err := r.call(ctx, p, req, forward, report, &emitErr)
		if reply.Model == "" {
			reply.Model = t.Model
		}
		last = attempt{reply: reply, err: err, next: done}
		if err == nil || sent || emitErr != nil || ctx.Err() != nil {
			return last
		}
		code := agate.ErrorCode(err)
		switch code {
		case agate.EUpstream, agate.EStreamTruncated, agate.EUpstreamRate:
			last.next = fallBack
		case agate.EUpstreamAuth, agate.EUpstreamTimeout:
			// A refused key stays refused, and a provider that let a whole timeout pass
			// would most likely let the next one pass too: the next target is the better bet.
			last.next = fallBack
			return last
		default:
			return last
		}
		if n >= r.retries {
			return last
		}
		wait := r.backoff(n)
		if ra := agate.RetryAfter(err); ra > 0 {
			if ra > r.maxRA {
				return last
			}
			wait = max(wait, ra)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= wait {
			return last
		}
		r.m.retries.WithLabelValues(b.target.Provider, b.target.Model, string(code)).Inc()
		if err := r.sleep(ctx, wait); err != nil {
			return attempt{reply: agate.Reply{Model: t.Model}, err: err, next: done}
		}
	}
}

// call runs one attempt and reports its verdict to the breaker, also when the provider
// panics: a probe that never reports would keep a half-open breaker shut for good.
func (r *Router) call(ctx context.Context, p Model, req agate.ModelRequest, emit func(agate.Delta) error,
	report func(error), emitErr *error) (reply agate.Reply, err error) {
	reported := false
	defer func() {
		if !reported {
			report(errFailure)
		}
	}()
	reply, err = p.Generate(ctx, req, emit)
	reported = true
	report(verdict(ctx, err, *emitErr))
	return reply, err
}

// backoff returns the jittered wait before retry n+1 (n from 0): base·2ⁿ capped at max,
// less a random part of up to half of it.
func (r *Router) backoff(n int) time.Duration {
	d := r.base
	for range n {
		if d >= r.max/2 {
			d = r.max
			break
		}
		d *= 2
	}
	d = min(d, r.max)
	half := d / 2
	return d - half + rand.N(half+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
