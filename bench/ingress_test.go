package bench

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agate-gw/agate/authn"
	"github.com/agate-gw/agate/httpapi"
	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/internal/cpubench"
	"github.com/agate-gw/agate/llm/openai"
	"github.com/agate-gw/agate/llm/router"
	"github.com/agate-gw/agate/sqlite"
	"github.com/agate-gw/agate/turn"
	"github.com/prometheus/client_golang/prometheus"
)

const chatBody = `{"model":"gpt-test","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What is the capital of France?"}],"temperature":0.2,"max_tokens":64}`

const chatAnswer = `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-test","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":21,"completion_tokens":2,"total_tokens":23}}`

// BenchmarkChatCompletionsIngress compares a non-streaming POST /v1/chat/completions
// through Agate (authentication, OpenAI request parsing, the router with its breaker, the
// OpenAI adapter, the response in OpenAI's shape) with the same request through a bare
// httputil.ReverseProxy, both against one zero-latency upstream on loopback. Agate's
// added cost is the difference of the two cpu-µs/op figures of one run.
func BenchmarkChatCompletionsIngress(b *testing.B) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, chatAnswer)
	}))
	defer upstream.Close()
	target, _ := url.Parse(upstream.URL)

	post := func(b *testing.B, client *http.Client, url string) {
		res, err := client.Post(url, "application/json", strings.NewReader(chatBody))
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || !strings.Contains(string(body), "Paris.") {
			b.Fatalf("answered %d %s", res.StatusCode, body)
		}
	}

	b.Run("reverse-proxy", func(b *testing.B) {
		proxy := httptest.NewServer(httputil.NewSingleHostReverseProxy(target))
		defer proxy.Close()
		client := proxy.Client()
		cpubench.Measure(b, func() {
			for b.Loop() {
				post(b, client, proxy.URL+"/v1/chat/completions")
			}
		})
	})

	b.Run("agate", func(b *testing.B) {
		ctx := context.Background()
		store, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "agate.db"), sqlite.Config{Relaxed: true})
		if err != nil {
			b.Fatal(err)
		}
		defer store.Close()
		log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}))
		reg := prometheus.NewRegistry()
		model, err := router.New(map[string]router.Model{
			"openai": openai.New(openai.Config{BaseURL: upstream.URL + "/v1", APIKey: "k"}),
		}, router.Config{Routes: map[string][]router.Target{"default": {{Provider: "openai", Model: "gpt-test"}}}}, reg)
		if err != nil {
			b.Fatal(err)
		}
		hub := inmem.NewHub(0)
		runner := turn.New(store, model, hub, log, turn.Config{})
		api := httpapi.New(httpapi.Deps{Runner: runner, Model: model, Store: store, Hub: hub, Auth: authn.Anonymous{Tenant: "public"}, Limiter: inmem.NewLimiter(inmem.LimiterConfig{})}, log, reg, httpapi.Config{})
		srv := httptest.NewServer(api)
		defer srv.Close()
		client := srv.Client()
		cpubench.Measure(b, func() {
			for b.Loop() {
				post(b, client, srv.URL+"/v1/chat/completions")
			}
		})
	})
}
