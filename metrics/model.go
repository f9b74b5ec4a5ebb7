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

// LLM holds the collectors of model calls, shared by every provider.
type LLM struct {
	ttft     *prometheus.HistogramVec
	duration *prometheus.HistogramVec
	tokens   *prometheus.CounterVec
}

// NewLLM registers the model-call collectors on reg.
func NewLLM(reg prometheus.Registerer) *LLM {
	m := &LLM{
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "llm_time_to_first_token_seconds", Help: "Time from the model call to its first streamed token.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 10),
		}, []string{"provider"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "llm_request_duration_seconds", Help: "Model calls by outcome code (\"ok\" on success).",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
		}, []string{"provider", "code"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_tokens_total", Help: "Tokens by provider, model and kind (prompt, completion).",
		}, []string{"provider", "model", "kind"}),
	}
	reg.MustRegister(m.ttft, m.duration, m.tokens)
	return m
}

// Wrap returns next decorated with time-to-first-token, duration, token and outcome
// metrics labelled with provider.
func (m *LLM) Wrap(next Generator, provider string) Generator {
	return &model{LLM: m, next: next, provider: provider, ttft: m.ttft.WithLabelValues(provider)}
}

type model struct {
	*LLM
	next     Generator
	provider string
	ttft     prometheus.Observer
}

// Generate calls the wrapped model and records what it did.
func (m *model) Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error) {
	start := time.Now()
	first := true
	reply, err := m.next.Generate(ctx, req, func(d agate.Delta) error {
		if first {
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
