package metrics_test

import (
	"context"
	"strings"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/llmtest"
	"github.com/agate-gw/agate/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestModelDecoratorRecordsTokensTTFTAndOutcomes(t *testing.T) {
	reg := prometheus.NewRegistry()
	script := llmtest.New(
		llmtest.Text("Hi", " there").Usage(agate.Usage{PromptTokens: 7, CompletionTokens: 2, TotalTokens: 9}).Model("m1"),
		llmtest.Fail(agate.Errorf(agate.EUpstreamRate, "slow down")),
	)
	m := metrics.NewLLM(reg).Wrap(script, "openai")
	req := agate.ModelRequest{Messages: []agate.Message{{Role: "user", Content: "hi"}}}
	var got string
	reply, err := m.Generate(context.Background(), req, func(d agate.Delta) error { got += d.Text; return nil })
	if err != nil || got != "Hi there" || reply.Text != "Hi there" {
		t.Fatalf("decorated Generate = %q, %v (emitted %q)", reply.Text, err, got)
	}
	if _, err := m.Generate(context.Background(), req, func(agate.Delta) error { return nil }); agate.ErrorCode(err) != agate.EUpstreamRate {
		t.Fatalf("error not passed through: %v", err)
	}
	want := `
# HELP llm_tokens_total Tokens by provider, model and kind (prompt, completion).
# TYPE llm_tokens_total counter
llm_tokens_total{kind="completion",model="m1",provider="openai"} 2
llm_tokens_total{kind="prompt",model="m1",provider="openai"} 7
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "llm_tokens_total"); err != nil {
		t.Fatal(err)
	}
	if n, _ := testutil.GatherAndCount(reg, "llm_time_to_first_token_seconds"); n != 1 {
		t.Fatalf("ttft series = %d, want 1", n)
	}
	if n, _ := testutil.GatherAndCount(reg, "llm_request_duration_seconds"); n != 2 { // ok and upstream_rate_limited
		t.Fatalf("duration series = %d, want one per outcome (2)", n)
	}
}
