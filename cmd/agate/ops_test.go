package main

import (
	"bufio"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestHealthReadinessMetricsAndOpenAPI(t *testing.T) {
	g := start(t, withUpstream(newUpstream(t), map[string]string{"LOG_LEVEL": "info"}))
	g.send(t, "", "count me")

	var health struct {
		Status     string            `json:"status"`
		Components map[string]string `json:"components"`
	}
	res := do(t, "GET", g.URL+"/v1/health", "", nil)
	res.json(t, &health)
	if res.status != 200 || health.Status != "ok" || health.Components["store"] != "ok" || health.Components["llm"] != "ok" {
		t.Fatalf("health = %d %+v", res.status, health)
	}
	for _, path := range []string{"/livez", "/readyz"} {
		if res := do(t, "GET", g.URL+path, "", nil); res.status != 200 {
			t.Fatalf("%s = %d %s", path, res.status, res.body)
		}
	}

	metrics := string(do(t, "GET", g.URL+"/metrics", "", nil).body)
	for _, want := range []string{
		`http_requests_total{code="200",route="POST /v1/session/message"} 1`,
		`http_request_duration_seconds_count{route="POST /v1/session/message"} 1`,
		`http_requests_total{code="200",route="GET /v1/health"} 1`,
		"turns_queued", "sse_clients 0", "go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	var doc struct {
		OpenAPI string         `json:"openapi"`
		Paths   map[string]any `json:"paths"`
	}
	do(t, "GET", g.URL+"/openapi.json", "", nil).json(t, &doc)
	if !strings.HasPrefix(doc.OpenAPI, "3.") || doc.Paths["/v1/session/message"] == nil {
		t.Fatalf("openapi.json: version %q, %d paths", doc.OpenAPI, len(doc.Paths))
	}
}

func TestEveryRequestIsLoggedAsOneJSONLine(t *testing.T) {
	g := start(t, map[string]string{"LOG_LEVEL": "info"})
	res := do(t, "GET", g.URL+"/v1/sessions", "", map[string]string{"X-Request-ID": "trace-me-1"})
	if res.status != 200 {
		t.Fatal(res.status)
	}
	sc := bufio.NewScanner(strings.NewReader(g.logs.String()))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line is not JSON: %s", sc.Text())
		}
		if line["msg"] == "request" && line["request_id"] == "trace-me-1" {
			if line["route"] != "GET /v1/sessions" || line["status"] != float64(200) || line["duration_ms"] == nil || line["tenant"] != "public" {
				t.Fatalf("request log line = %v", line)
			}
			return
		}
	}
	t.Fatalf("no request log line with request_id trace-me-1 in:\n%s", g.logs.String())
}

func TestHelpListsEverySetting(t *testing.T) {
	var out strings.Builder
	if err := run(t.Context(), []string{"agate", "--help"}, func(string) string { return "" }, nil, &out, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"AGATE_ADDR", "LLM_BASE_URL", "LLM_API_KEY", "GATEWAY_REQUIRE_AUTH", "AGATE_PROFILE", "LOG_LEVEL"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %s", want)
		}
	}
}

func TestBadSettingsStopStartWithAClearError(t *testing.T) {
	for env, want := range map[string]string{
		"AGATE_PROFILE":           "want dev or prod",
		"LLM_TIMEOUT":             "duration",
		"AGATE_WORKERS":           "whole number",
		"GATEWAY_JWT_ALGORITHMS":  "never allowed",
		"GATEWAY_JWKS_URL":        "http:// or https://",
		"LLM_BASE_URL":            "http:// or https://",
		"LOG_LEVEL":               "want debug",
		"AGATE_MAX_BODY_BYTES":    "must exceed",
		"KAFKA_BOOTSTRAP_SERVERS": "without POSTGRES_DSN",
		"KAFKA_SASL_MECHANISM":    "want plain",
	} {
		vals := map[string]string{"AGATE_PROFILE": "staging", "LLM_TIMEOUT": "soon", "AGATE_WORKERS": "-3", "GATEWAY_JWT_ALGORITHMS": "RS256,none", "GATEWAY_JWKS_URL": "ftp://keys",
			"LLM_BASE_URL": "api.openai.com", "LOG_LEVEL": "loud", "AGATE_MAX_BODY_BYTES": "1000",
			"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "KAFKA_SASL_MECHANISM": "gssapi"}
		// Should a bad setting be taken, the gateway runs: it stops after a while instead
		// of hanging the test, and on a port and data directory of the test's own.
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		dir := t.TempDir()
		err := run(ctx, []string{"agate"}, func(k string) string {
			switch k {
			case env:
				return vals[k]
			case "AGATE_ADDR":
				return "127.0.0.1:0"
			case "AGATE_DATA_DIR":
				return dir
			}
			return ""
		}, nil, &strings.Builder{}, &strings.Builder{})
		cancel()
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), env) {
			t.Errorf("%s=%s: err = %v, want it to name the variable and say %q", env, vals[env], err, want)
		}
	}
}
