package main

import (
	"context"
	"log/slog"
	"path/filepath"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/authn"
	"github.com/agate-gw/agate/httpapi"
	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/llm/demo"
	"github.com/agate-gw/agate/llm/openai"
	"github.com/agate-gw/agate/metrics"
	"github.com/agate-gw/agate/sqlite"
	"github.com/agate-gw/agate/turn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// gateway is the wired program: the one place that chooses adapters.
type gateway struct {
	store  turn.Store
	runner *turn.Runner
	api    *httpapi.Server
}

func (g *gateway) close() error { return g.store.Close() }

// wire builds the gateway from cfg: a real adapter where its URL is set, else the
// embedded default.
func wire(ctx context.Context, cfg config, log *slog.Logger) (*gateway, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	store, err := openStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	provider, model, modelName := chooseModel(cfg)
	log.Info("model provider", "provider", provider, "model", modelName)

	hub := inmem.NewHub(0)
	runner := turn.New(store, metrics.NewModel(model, provider, reg), hub, log, turn.Config{
		Workers: cfg.Workers, MaxQueued: cfg.MaxQueued, TurnTimeout: cfg.LLMTimeout, Grace: cfg.Grace,
		HistoryLimit: cfg.History, ContextTokens: cfg.Context, MaxTokens: cfg.LLMMaxTokens,
		Model: cfg.LLMModel, SystemPrompt: cfg.SystemPrompt,
	})
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "turns_queued", Help: "Turns accepted and not finished (waiting or running).",
	}, func() float64 { return float64(runner.Queued()) }))

	checks := []httpapi.Check{
		{Name: "store", Required: true, Probe: store.Ping},
		{Name: "llm", Probe: func(context.Context) error {
			if provider == "none" {
				return agate.Errorf(agate.ELLMNotConfigured, "no LLM provider configured")
			}
			return nil
		}},
	}
	api := httpapi.New(runner, store, hub, authn.Anonymous{Tenant: cfg.Tenant}, checks, log, reg, httpapi.Config{
		MaxBodyBytes: cfg.MaxBody, MaxMessageBytes: cfg.MaxMessage,
	})
	return &gateway{store: store, runner: runner, api: api}, nil
}

func openStore(ctx context.Context, cfg config) (*sqlite.Store, error) {
	return sqlite.Open(ctx, filepath.Join(cfg.DataDir, "agate.db"), sqlite.Config{Relaxed: cfg.SQLiteFast})
}

// chooseModel returns the provider's name, the model and the model name to report.
func chooseModel(cfg config) (string, turn.Model, string) {
	switch {
	case cfg.LLMBaseURL != "":
		return "openai", openai.New(openai.Config{BaseURL: cfg.LLMBaseURL, APIKey: cfg.LLMAPIKey, Model: cfg.LLMModel, Timeout: cfg.LLMTimeout}), cfg.LLMModel
	case cfg.Profile == "dev":
		return "demo", demo.New(demo.Config{}), "agate-demo"
	default:
		return "none", unconfigured{}, ""
	}
}

// unconfigured is the model of a prod gateway without a provider: every turn ends with
// metadata.code "llm_not_configured".
type unconfigured struct{}

func (unconfigured) Generate(context.Context, agate.ModelRequest, func(agate.Delta) error) (agate.Reply, error) {
	return agate.Reply{}, agate.Errorf(agate.ELLMNotConfigured,
		"No LLM provider is configured: set LLM_BASE_URL, LLM_API_KEY and LLM_MODEL, then restart the gateway.")
}
