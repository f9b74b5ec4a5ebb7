package router

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/agate-gw/agate"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// Outcomes reported to a breaker: success is nil.
var (
	errFailure = errors.New("router: provider failure")   // counts towards opening
	errNeutral = errors.New("router: not the provider's") // counts as neither
)

// verdict classifies an attempt's result for its breaker (see the package documentation).
func verdict(ctx context.Context, err, emitErr error) error {
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil, emitErr != nil:
		return errNeutral
	}
	switch agate.ErrorCode(err) {
	case agate.EUpstream, agate.EUpstreamTimeout, agate.EStreamTruncated, agate.EUpstreamAuth:
		return errFailure
	}
	return errNeutral
}

// breaker is the circuit breaker of one target.
type breaker struct {
	target Target
	cb     *gobreaker.TwoStepCircuitBreaker[struct{}]

	mu        sync.Mutex
	openUntil time.Time // when it last opened, plus OpenFor
}

// breakerFor returns t's breaker, making it if need be. Breakers made for requests
// (adHoc) beyond maxAdHoc are shared per provider under the model "*", and never open:
// one client's typos must not shut out everyone else's requests.
func (r *Router) breakerFor(t Target, adHoc bool) *breaker {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b, ok := r.breakers[t]; ok {
		return b
	}
	if adHoc {
		if r.adHoc >= maxAdHoc {
			t.Model = "*"
			if b, ok := r.breakers[t]; ok {
				return b
			}
		}
		r.adHoc++
	}
	b := &breaker{target: t}
	shared := t.Model == "*"
	openFor := r.bcfg.OpenFor
	opened := r.m.opened.WithLabelValues(t.Provider, t.Model)
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        t.String(),
		MaxRequests: r.bcfg.HalfOpenProbes,
		Timeout:     openFor,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return !shared && c.ConsecutiveFailures >= r.bcfg.Failures
		},
		// Called with the gobreaker's lock held: it must not call into b.cb.
		OnStateChange: func(_ string, _, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				b.mu.Lock()
				b.openUntil = time.Now().Add(openFor)
				b.mu.Unlock()
				opened.Inc()
			}
		},
		IsExcluded: func(err error) bool { return errors.Is(err, errNeutral) },
	})
	r.breakers[t] = b
	return b
}

// reopensIn returns how long until b lets a request through: 0 unless it is open.
func (b *breaker) reopensIn() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return max(0, time.Until(b.openUntil))
}

// BreakerStatus is the state of one (provider, model) circuit breaker.
type BreakerStatus struct {
	Provider string `json:"provider"`
	Model    string `json:"model"`
	// State is "closed", "half-open" or "open".
	State string `json:"state"`
	// ConsecutiveFailures counts the failed attempts in a row since the breaker last
	// changed state.
	ConsecutiveFailures uint32 `json:"consecutive_failures"`
	// OpenUntil is when an open breaker half-opens; zero unless State is "open".
	OpenUntil time.Time `json:"open_until,omitzero"`
}

// Breakers returns the state of every breaker, sorted by provider and model: those of
// the configured targets, and those made for models that requests named directly.
func (r *Router) Breakers() []BreakerStatus {
	var out []BreakerStatus
	for _, b := range r.snapshot() {
		st := b.cb.State()
		s := BreakerStatus{
			Provider:            b.target.Provider,
			Model:               b.target.Model,
			State:               st.String(),
			ConsecutiveFailures: b.cb.Counts().ConsecutiveFailures,
		}
		if st == gobreaker.StateOpen {
			b.mu.Lock()
			s.OpenUntil = b.openUntil
			b.mu.Unlock()
		}
		out = append(out, s)
	}
	return out
}

// snapshot returns the breakers sorted by target.
func (r *Router) snapshot() []*breaker {
	r.mu.Lock()
	out := make([]*breaker, 0, len(r.breakers))
	for _, b := range r.breakers {
		out = append(out, b)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b *breaker) int {
		return cmp.Or(cmp.Compare(a.target.Provider, b.target.Provider), cmp.Compare(a.target.Model, b.target.Model))
	})
	return out
}

// routerMetrics are a router's collectors.
type routerMetrics struct {
	state     *stateCollector
	opened    *prometheus.CounterVec
	fallbacks *prometheus.CounterVec
	retries   *prometheus.CounterVec
}

func newRouterMetrics(r *Router) *routerMetrics {
	return &routerMetrics{
		state: &stateCollector{r: r, desc: prometheus.NewDesc("circuit_breaker_state",
			"State of the circuit breaker of a provider's model: 0 closed, 1 half-open, 2 open.",
			[]string{"provider", "model"}, nil)},
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "circuit_breaker_open_total", Help: "Times the circuit breaker of a provider's model opened.",
		}, []string{"provider", "model"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_fallbacks_total", Help: "Requests for a model alias passed from one target of its chain to the next (failed or breaker open).",
		}, []string{"alias", "from", "to"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_retries_total", Help: "Retries of a provider's model, by the error code of the failed attempt.",
		}, []string{"provider", "model", "code"}),
	}
}

func (m *routerMetrics) register(reg prometheus.Registerer) error {
	cs := []prometheus.Collector{m.state, m.opened, m.fallbacks, m.retries}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return err
		}
	}
	return nil
}

// stateCollector reports each breaker's state when scraped, so that an open breaker is
// seen half-opening even while no request comes.
type stateCollector struct {
	r    *Router
	desc *prometheus.Desc
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, b := range c.r.snapshot() {
		var v float64
		switch b.cb.State() {
		case gobreaker.StateHalfOpen:
			v = 1
		case gobreaker.StateOpen:
			v = 2
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v, b.target.Provider, b.target.Model)
	}
}
