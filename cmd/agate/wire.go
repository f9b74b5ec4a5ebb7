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
	model, err := chooseModels(cfg, reg, log)
	if err != nil {
		return nil, errors.Join(err, store.Close())
	}

	hub := inmem.NewHub(0)
	tcfg := turn.Config{
		Workers: cfg.Workers, MaxQueued: cfg.MaxQueued, TurnTimeout: cfg.TurnTimeout, Grace: cfg.Grace,
		HistoryLimit: cfg.History, ContextTokens: cfg.Context, MaxTokens: cfg.LLMMaxTokens,
		SystemPrompt: cfg.SystemPrompt,
	}
	var (
		runner  *turn.Runner
		api     httpapi.Runner
		jobs    []func(context.Context) error
		after   []func(context.Context) error
		closers []func() error
		checks  []httpapi.Check
	)
	if cfg.Kafka == "" {
		runner = turn.New(store, model, hub, log, tcfg)
		api = runner
	} else {
		b, err := wireBus(cfg, replica, store, model, hub, tcfg, log, reg)
		if err != nil {
			return nil, errors.Join(err, store.Close())
		}
		runner, api, jobs, after, closers = b.runner, b.api, b.jobs, b.after, b.closers
		checks = append(checks, b.check)
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "turns_queued", Help: "Turns accepted and not finished (waiting or running).",
	}, func() float64 { return float64(runner.Queued()) }))

	limiter, limitCheck, err := chooseLimiter(cfg, log)
	if err != nil {
		return nil, errors.Join(err, (&gateway{store: store, closer: closers}).close())
	}
	if limitCheck.Probe != nil {
		closers = append(closers, limitCheck.close)
	}

	checks = append([]httpapi.Check{
		{Name: "store", Required: true, Probe: store.Ping},
		{Name: "llm", Probe: func(context.Context) error {
			if cfg.Profile == "prod" && cfg.LLMBaseURL == "" && cfg.AnthropicKey == "" {
				return agate.Errorf(agate.ELLMNotConfigured, "no LLM provider configured")
			}
			return nil
		}},
	}, checks...)
	if limitCheck.Probe != nil {
		checks = append(checks, limitCheck.Check)
	}
	srv := httpapi.New(api, model, store, hub, anonymous(cfg), limiter, checks, log, reg, httpapi.Config{
		MaxBodyBytes: cfg.MaxBody, MaxMessageBytes: cfg.MaxMessage,
		TenantLimit: inmem.Limit{Rate: cfg.TenantRPM, Per: time.Minute},
	})
	return &gateway{store: store, runner: runner, api: srv, jobs: jobs, after: after, closer: closers}, nil
}

// replicaName names this process on the event bus: the host name and a random suffix, so
// that two processes on one host differ.
func replicaName() string {
	host, _ := os.Hostname()
	return cmp.Or(host, "agate") + "-" + uuid.NewString()[:8]
}

// redisCheck is the health component of a Redis-backed limiter, and its client's close.
type redisCheck struct {
	httpapi.Check
	close func() error
}

// chooseLimiter returns the Redis limiter when REDIS_URL is set (its health check reports
// "degraded" while Redis does not answer, and the limiter enforces limits in process),
// else an in-process one.
func chooseLimiter(cfg config, log *slog.Logger) (httpapi.Limiter, redisCheck, error) {
	if cfg.RedisURL == "" {
		return inmem.NewLimiter(inmem.LimiterConfig{}), redisCheck{}, nil
	}
	redis.UseLogger(log)
	client, err := redis.NewClient(cfg.RedisURL)
	if err != nil {
		return nil, redisCheck{}, err
	}
	l := redis.NewLimiter(client, nil, redis.Config{Replicas: max(cfg.Replicas, 1), Logger: log})
	return l, redisCheck{
		// Asks Redis itself: the limiter notices an outage, and its end, only when a
		// request comes.
		Check: httpapi.Check{Name: "redis", Probe: func(ctx context.Context) error {
			if err := client.Ping(ctx).Err(); err != nil {
				return agate.Wrap(agate.EUnavailable, err, "redis is unreachable; limits are enforced per replica")
			}
			return nil
		}},
		close: client.Close,
	}, nil
}

// anonymous is the principal of every caller while authentication is off; only the dev
// profile makes it an operator.
func anonymous(cfg config) authn.Anonymous {
	a := authn.Anonymous{Tenant: cfg.Tenant}
	if cfg.Profile == "dev" {
		a.Scopes = []string{"admin"}
	}
	return a
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
