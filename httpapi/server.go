// Package httpapi is the gateway's HTTP and WebSocket API: routes, middleware, SSE and
// WebSocket streaming, and the one mapping from error codes to HTTP statuses.
package httpapi

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/metrics"
	"github.com/agate-gw/agate/turn"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
)

// Runner accepts messages and controls running turns (turn.Runner).
type Runner interface {
	// Send persists the message and queues its turn; see turn.Runner.Send.
	Send(ctx context.Context, in agate.Inbound) (agate.Accepted, error)
	// Cancel stops the session's running turn and reports whether one was running.
	Cancel(session uuid.UUID) bool
	// Forget drops the session's queued and running turns; the session was deleted.
	Forget(session uuid.UUID)
}

// Store is what the API reads directly, and where chat completions are recorded.
type Store interface {
	turn.Sessions
	turn.History
	turn.Log
	turn.Keys
	turn.DeadLetters
}

// Model answers chat completions: the provider router, with its fallbacks and breakers.
type Model interface {
	// Generate is turn.Model's Generate.
	Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error)
	// Models lists the model names clients may ask for.
	Models() []string
}

// Authenticator resolves the principal of a request. It returns an error with code
// agate.EUnauthenticated for missing or bad credentials, and another code (such as
// agate.EUnavailable) when it cannot tell.
type Authenticator interface {
	Authenticate(r *http.Request) (agate.Principal, error)
}

// Limiter decides whether a caller may make one more request (inmem.Limiter in
// process, redis.Limiter shared by replicas). Allow answers from a fallback rather than
// fail when its backing store is down; an error is a bug, not an outage.
type Limiter interface {
	Allow(ctx context.Context, key string, limit inmem.Limit) (inmem.Decision, error)
}

// Check is one component of /v1/health.
type Check struct {
	Name     string
	Required bool                            // its failure makes the gateway "down" and not ready
	Probe    func(ctx context.Context) error // nil error: the component works
}

// Config tunes the API. The zero value is usable.
type Config struct {
	MaxBodyBytes     int64         // request body limit; default 256 KiB
	MaxMessageBytes  int           // user message limit; default 64 KiB
	Heartbeat        time.Duration // SSE comment and WebSocket ping interval; default 15s
	WriteTimeout     time.Duration // for one streamed frame; default 30s
	ReadTimeout      time.Duration // for a request body; default 30s
	MaxChatBodyBytes int64         // chat completion request limit (whole conversations); default 8 MiB
	MaxCompletions   int           // chat completions running at once before 429; default 512
	TenantLimit      inmem.Limit   // requests that create work, per tenant; zero: unlimited
	KeyLimit         inmem.Limit   // the same per API key; zero: unlimited
}

func (c *Config) setDefaults() {
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 256 << 10
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 64 << 10
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 15 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 30 * time.Second
	}
	if c.MaxCompletions <= 0 {
		c.MaxCompletions = 512
	}
	if c.MaxChatBodyBytes <= 0 {
		c.MaxChatBodyBytes = 8 << 20
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 30 * time.Second
	}
}

// Deps is what the API is built on. Authz, Policy, Tenants and NewKey may be nil.
type Deps struct {
	Runner  Runner
	Model   Model
	Store   Store
	Hub     *inmem.Hub
	Auth    Authenticator
	Limiter Limiter
	Checks  []Check
	// Authz decides who may read and change which session; nil: anyone of the tenant.
	Authz Authorizer
	// Policy decides actions (conversation.send, model.use, admin.*); nil: all allowed.
	Policy Policy
	// Tenants gives a tenant's settings; nil: Config's for every tenant.
	Tenants func(tenant string) TenantSettings
	// Budget reserves tokens for a synchronous model call (tenant.Budgets): an error with
	// agate.EBudgetExceeded refuses it; settle is called once with the tokens used;
	// limited says the caller is on a budget (its reply must then be bounded). nil: no
	// budgets.
	Budget func(ctx context.Context, tenant, persona string, n int64) (settle func(used int64), limited bool, err error)
	// Tools lists and runs tools for GET /v1/tools and POST /v1/tool/request; nil: none.
	Tools Tools
	// NewKey makes an API key and its token (authn.NewAPIKey); nil: /v1/keys refuses.
	NewKey func(tenant, label string, scopes []string, createdBy string, now time.Time) (string, agate.APIKey, error)
}

// Server is the API's http.Handler.
type Server struct {
	runner     Runner
	model      Model
	store      Store
	hub        *inmem.Hub
	auth       Authenticator
	limiter    Limiter
	checks     []Check
	authz      Authorizer
	policy     Policy
	tenants    func(tenant string) TenantSettings
	newKey     func(tenant, label string, scopes []string, createdBy string, now time.Time) (string, agate.APIKey, error)
	budget     func(ctx context.Context, tenant, persona string, n int64) (func(used int64), bool, error)
	tools      Tools
	log        *slog.Logger
	metrics    *metrics.HTTP
	gatherer   prometheus.Gatherer
	cfg        Config
	started    time.Time // reported as the models' creation time
	draining   atomic.Bool
	stopCtx    context.Context // done once Drain is called: open streams and calls end
	cancelStop context.CancelFunc
	slots      chan struct{}   // one per running chat completion
	conns      sync.WaitGroup  // WebSocket handlers, which outlive http.Server.Shutdown
	streams    map[string]bool // route patterns of long-lived streams
	handler    http.Handler
}

// New returns the API. Metrics are registered on reg and served from it.
func New(d Deps, log *slog.Logger, reg *prometheus.Registry, cfg Config) *Server {
	cfg.setDefaults()
	s := &Server{
		runner: d.Runner, model: d.Model, store: d.Store, hub: d.Hub, auth: d.Auth, limiter: d.Limiter, checks: d.Checks,
		authz: d.Authz, policy: d.Policy, tenants: d.Tenants, newKey: d.NewKey, budget: d.Budget, tools: d.Tools, log: log,
		metrics: metrics.NewHTTP(reg), gatherer: reg, cfg: cfg, started: time.Now(),
		slots: make(chan struct{}, cfg.MaxCompletions),
	}
	s.stopCtx, s.cancelStop = context.WithCancel(context.Background())
	mux := http.NewServeMux()
	s.streams = make(map[string]bool)
	for _, rt := range s.routes() {
		if rt.flags&streaming != 0 {
			s.streams[rt.method+" "+rt.pattern] = true
		}
		h := rt.handler
		if rt.flags&private != 0 {
			fail := s.fail
			if rt.flags&openaiAPI != 0 {
				fail = s.failChat
			}
			if rt.flags&metered != 0 {
				h = s.meter(h, fail)
			}
			h = s.authenticate(h, fail)
		}
		mux.Handle(rt.method+" "+rt.pattern, h)
	}
	mux.Handle("/", s.notFound(mux))
	s.handler = s.observe(mux)
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Drain marks the gateway as shutting down: /readyz fails from then on, and open SSE and
// WebSocket streams end (clients reconnect to another replica and resume).
func (s *Server) Drain() {
	s.draining.Store(true)
	s.cancelStop()
}

// acquire takes a chat completion slot if one is free.
func (s *Server) acquire() bool {
	select {
	case s.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s *Server) release() { <-s.slots }

// Wait blocks until every WebSocket handler has returned (after Drain they close), or
// until ctx is done.
func (s *Server) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("websocket connections still open: %w", ctx.Err())
	}
}

// notFound answers requests no route matched: 405 with Allow when the path exists for
// other methods, else 404.
func (s *Server) notFound(mux *http.ServeMux) http.Handler {
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, m := range methods {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "" && pattern != "/" {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			for _, m := range allow {
				w.Header().Add("Allow", m)
			}
			s.fail(w, r, agate.Errorf(agate.EMethodNotAllowed, "%s is not allowed on %s.", r.Method, r.URL.Path))
			return
		}
		s.fail(w, r, agate.Errorf(agate.ENotFound, "No route %s %s.", r.Method, r.URL.Path))
	})
}
