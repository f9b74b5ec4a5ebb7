package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/authn"
	"github.com/agate-gw/agate/httpapi"
	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/llm/anthropic"
	"github.com/agate-gw/agate/llm/demo"
	"github.com/agate-gw/agate/llm/openai"
	"github.com/agate-gw/agate/llm/router"
	"github.com/agate-gw/agate/metrics"
	"github.com/agate-gw/agate/postgres"
	"github.com/agate-gw/agate/redis"
	"github.com/agate-gw/agate/sqlite"
	"github.com/agate-gw/agate/turn"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	goredis "github.com/redis/go-redis/v9"
)

// gateway is the wired program: the one place that chooses adapters.
type gateway struct {
	store  turn.Store
	runner *turn.Runner
	api    *httpapi.Server
	jobs   []func(ctx context.Context) error // background work that runs beside the runner until shutdown
	after  []func(ctx context.Context) error // background work that stops only once the runner has
	closer []func() error                    // of the adapters, in the order they are to close
}

func (g *gateway) close() error {
	var errs []error
	for _, c := range g.closer {
		errs = append(errs, c())
	}
	return errors.Join(append(errs, g.store.Close())...)
}

// wire builds the gateway from cfg: a real adapter where its URL is set, else the
// embedded default.
func wire(ctx context.Context, cfg config, log *slog.Logger) (*gateway, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	replica := cmp.Or(cfg.ReplicaID, replicaName())
	store, err := openStore(ctx, cfg, replica)
	if err != nil {
		return nil, err
	}
	var closers []func() error
	fail := func(err error) (*gateway, error) {
		return nil, errors.Join(err, (&gateway{store: store, closer: closers}).close())
	}
	model, err := chooseModels(cfg, reg, log)
	if err != nil {
		return fail(err)
	}
	var rc *goredis.Client
	if cfg.RedisURL != "" {
		redis.UseLogger(log)
		if rc, err = redis.NewClient(cfg.RedisURL); err != nil {
			return fail(err)
		}
		closers = append(closers, rc.Close)
	}
	acc, err := wireAccess(cfg, store, rc, log)
	if err != nil {
		return fail(err)
	}
	az, err := wireAuthz(ctx, cfg, log, reg)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, az.closers...)

	tg, err := wireTools(cfg, az.rel, az.policy, store, log)
	if err != nil {
		return fail(err)
	}
	hub := inmem.NewHub(0)
	tcfg := turn.Config{
		Workers: cfg.Workers, MaxQueued: cfg.MaxQueued, TurnTimeout: cfg.TurnTimeout, Grace: cfg.Grace,
		HistoryLimit: cfg.History, ContextTokens: cfg.Context, MaxTokens: cfg.LLMMaxTokens,
		SystemPrompt: cfg.SystemPrompt, SystemPromptFor: acc.systemPrompt, Admit: acc.admit(az.policy, model.Targets, cfg.LLMMaxTokens, log),
		Tools: tg, MaxToolRounds: cfg.ToolRounds,
	}
	var (
		runner *turn.Runner
		api    httpapi.Runner
		jobs   = append(acc.jobs, az.jobs...)
		after  []func(context.Context) error
		checks = az.checks
	)
	if cfg.Kafka == "" {
		runner = turn.New(store, model, hub, log, tcfg)
		api = runner
	} else {
		b, err := wireBus(cfg, replica, store, model, hub, tcfg, log, reg)
		if err != nil {
			return fail(err)
		}
		runner, api, after = b.runner, b.api, b.after
		tg.remote = &remoteTools{enqueue: store.Enqueue, poke: b.poke, waiters: b.waiters, log: log}
		jobs, closers = append(jobs, b.jobs...), append(b.closers, closers...)
		checks = append(checks, b.check)
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "turns_queued", Help: "Turns accepted and not finished (waiting or running).",
	}, func() float64 { return float64(runner.Queued()) }))

	limiter, limitCheck := chooseLimiter(cfg, rc, log)

	checks = append([]httpapi.Check{
		{Name: "store", Required: true, Probe: store.Ping},
		{Name: "llm", Probe: func(context.Context) error {
			if cfg.Profile == "prod" && cfg.LLMBaseURL == "" && cfg.AnthropicKey == "" {
				return agate.Errorf(agate.ELLMNotConfigured, "no LLM provider configured")
			}
			return nil
		}},
	}, checks...)
	if limitCheck != nil {
		checks = append(checks, *limitCheck)
	}
	srv := httpapi.New(httpapi.Deps{Runner: api, Model: model, Store: store, Hub: hub, Auth: acc.auth,
		Limiter: limiter, Checks: checks, Authz: az.rel, Policy: az.policy, Tenants: acc.settings, NewKey: authn.NewAPIKey,
		Budget: acc.reserve(log), Tools: tg,
	}, log, reg, httpapi.Config{
		MaxBodyBytes: cfg.MaxBody, MaxMessageBytes: cfg.MaxMessage,
		TenantLimit: inmem.Limit{Rate: cfg.TenantRPM, Per: time.Minute},
		KeyLimit:    inmem.Limit{Rate: cfg.KeyRPM, Per: time.Minute},
	})
	return &gateway{store: store, runner: runner, api: srv, jobs: jobs, after: after, closer: closers}, nil
}

// replicaName names this process on the event bus: the host name and a random suffix, so
// that two processes on one host differ.
func replicaName() string {
	host, _ := os.Hostname()
	return cmp.Or(host, "agate") + "-" + uuid.NewString()[:8]
}

// chooseLimiter returns the Redis limiter when rc is not nil (its health check reports
// "degraded" while Redis does not answer, and the limiter enforces limits in process),
// else an in-process one.
func chooseLimiter(cfg config, rc *goredis.Client, log *slog.Logger) (httpapi.Limiter, *httpapi.Check) {
	if rc == nil {
		return inmem.NewLimiter(inmem.LimiterConfig{}), nil
	}
	l := redis.NewLimiter(rc, nil, redis.Config{Replicas: max(cfg.Replicas, 1), Logger: log})
	// Asks Redis itself: the limiter notices an outage, and its end, only when a request
	// comes.
	return l, &httpapi.Check{Name: "redis", Probe: func(ctx context.Context) error {
		if err := rc.Ping(ctx).Err(); err != nil {
			return agate.Wrap(agate.EUnavailable, err, "redis is unreachable; limits and budgets fall back to each replica and the store")
		}
		return nil
	}}
}

// openStore opens the PostgreSQL store when POSTGRES_DSN is set, else the embedded SQLite
// store. Both bring their schema up to date (`agate migrate` is just that).
// With Kafka configured the store also writes the outbox, its records marked as origin's.
func openStore(ctx context.Context, cfg config, origin string) (turn.Store, error) {
	bus := cfg.Kafka != ""
	if cfg.PostgresDSN != "" {
		s, err := postgres.Open(ctx, cfg.PostgresDSN, postgres.Config{
			MaxConns: cfg.PostgresMax, StatementTimeout: cfg.PostgresStmt, Bus: bus, Origin: origin,
		})
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	s, err := sqlite.Open(ctx, filepath.Join(cfg.DataDir, "agate.db"), sqlite.Config{Relaxed: cfg.SQLiteRelax, Bus: bus, Origin: origin})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// migrate brings the configured store's schema up to date, for `agate migrate`.
func migrate(ctx context.Context, cfg config, log *slog.Logger) error {
	if cfg.PostgresDSN != "" {
		if err := postgres.Migrate(ctx, cfg.PostgresDSN); err != nil {
			return err
		}
		log.Info("store schema is up to date", "store", "postgres")
		return nil
	}
	st, err := openStore(ctx, cfg, "")
	if err != nil {
		return err
	}
	log.Info("store schema is up to date", "store", "sqlite", "data_dir", cfg.DataDir)
	return st.Close()
}

// chooseModels builds the providers that are configured (each measured) and the router
// over them: "openai" with LLM_BASE_URL, "anthropic" with ANTHROPIC_API_KEY, else the demo
// model in dev or a model that refuses every turn in prod.
func chooseModels(cfg config, reg prometheus.Registerer, log *slog.Logger) (*router.Router, error) {
	measured := metrics.NewLLM(reg)
	providers := map[string]router.Model{}
	var first router.Target
	add := func(name, model string, m router.Model) {
		providers[name] = measured.Wrap(m, name)
		if first.Provider == "" {
			first = router.Target{Provider: name, Model: model}
		}
	}
	if cfg.LLMBaseURL != "" {
		add("openai", cmp.Or(cfg.LLMModel, "gpt-4.1-mini"), openai.New(openai.Config{
			BaseURL: cfg.LLMBaseURL, APIKey: cfg.LLMAPIKey, Model: cfg.LLMModel, Timeout: cfg.LLMTimeout, IdleTimeout: cfg.LLMIdle,
		}))
	}
	if cfg.AnthropicKey != "" {
		add("anthropic", cfg.AnthropicMod, anthropic.New(anthropic.Config{
			BaseURL: cfg.AnthropicURL, APIKey: cfg.AnthropicKey, Model: cfg.AnthropicMod, Timeout: cfg.LLMTimeout, IdleTimeout: cfg.LLMIdle,
		}))
	}
	if len(providers) == 0 {
		if cfg.Profile == "dev" {
			add("demo", demo.Name, demo.New(demo.Config{}))
		} else {
			add("none", "none", unconfigured{})
		}
	}
	routes, _ := parseRoutes(cfg.Routes) // validated by load
	if _, ok := routes[router.DefaultAlias]; !ok {
		routes[router.DefaultAlias] = []router.Target{first}
	}
	log.Info("model routes", "providers", slices.Sorted(maps.Keys(providers)), "routes", fmt.Sprint(routes))
	retries := cfg.Retries
	if retries == 0 {
		retries = -1 // router: 0 is its default, negative is none
	}
	return router.New(providers, router.Config{
		Routes: routes, Retries: retries,
		Breaker: router.BreakerConfig{Failures: uint32(cfg.BreakerFails), OpenFor: cfg.BreakerOpen},
	}, reg)
}

// unconfigured is the model of a prod gateway without a provider: every turn ends with
// metadata.code "llm_not_configured".
type unconfigured struct{}

func (unconfigured) Generate(context.Context, agate.ModelRequest, func(agate.Delta) error) (agate.Reply, error) {
	return agate.Reply{}, agate.Errorf(agate.ELLMNotConfigured,
		"No LLM provider is configured: set LLM_BASE_URL, LLM_API_KEY and LLM_MODEL, then restart the gateway.")
}
