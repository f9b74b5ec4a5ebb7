package metrics

import (
	"context"
	"time"

	"github.com/agate-gw/agate"
	"github.com/prometheus/client_golang/prometheus"
)

// Generator is the model interface the decorator wraps (turn.Model).
type Generator interface {
	Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error)
}

// Model decorates a model with time-to-first-token, duration, token and outcome metrics.
type Model struct {
	next     Generator
	provider string
	ttft     prometheus.Observer
	duration *prometheus.HistogramVec
	tokens   *prometheus.CounterVec
}

// NewModel registers the LLM collectors on reg and returns next decorated with them.
func NewModel(next Generator, provider string, reg prometheus.Registerer) *Model {
	ttft := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "llm_time_to_first_token_seconds", Help: "Time from the model call to its first streamed token.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 10),
	}, []string{"provider"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "llm_request_duration_seconds", Help: "Model calls by outcome code (\"ok\" on success).",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
	}, []string{"provider", "code"})
	tokens := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llm_tokens_total", Help: "Tokens by provider, model and kind (prompt, completion).",
	}, []string{"provider", "model", "kind"})
	reg.MustRegister(ttft, duration, tokens)
	return &Model{next: next, provider: provider, ttft: ttft.WithLabelValues(provider), duration: duration, tokens: tokens}
}

// Generate calls the wrapped model and records what it did.
func (m *Model) Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error) {
	start := time.Now()
	first := true
	reply, err := m.next.Generate(ctx, req, func(d agate.Delta) error {
		if first && d.Text != "" {
			first = false
			m.ttft.Observe(time.Since(start).Seconds())
		}
		return emit(d)
	})
	code := string(agate.ErrorCode(err))
	if err == nil {
		code = "ok"
	} else if ctx.Err() != nil {
		code = "cancelled"
	}
	m.duration.WithLabelValues(m.provider, code).Observe(time.Since(start).Seconds())
	if err == nil {
		m.tokens.WithLabelValues(m.provider, reply.Model, "prompt").Add(float64(reply.Usage.PromptTokens))
		m.tokens.WithLabelValues(m.provider, reply.Model, "completion").Add(float64(reply.Usage.CompletionTokens))
	}
	return reply, err
}
