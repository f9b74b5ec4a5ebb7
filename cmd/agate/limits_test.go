package main

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestTenantOverItsRateGets429WithRetryAfter(t *testing.T) {
	g := start(t, withUpstream(newUpstream(t), map[string]string{"AGATE_TENANT_RPM": "2"}))
	body := `{"message":"hi"}`
	for i := range 2 {
		if res := do(t, "POST", g.URL+"/v1/session/message", body, nil); res.status != 200 {
			t.Fatalf("message %d: %d %s", i+1, res.status, res.body)
		}
	}
	res := do(t, "POST", g.URL+"/v1/session/message", body, nil)
	if res.status != 429 || !contains(res.body, `"rate_limited"`) {
		t.Fatalf("third message in a minute: %d %s", res.status, res.body)
	}
	if s, err := strconv.Atoi(res.header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
		t.Fatalf("Retry-After = %q, want 1..60 seconds", res.header.Get("Retry-After"))
	}
	// Chat completions count against the same tenant and answer in OpenAI's shape.
	res = do(t, "POST", g.URL+"/v1/chat/completions", `{"model":"default","messages":[{"role":"user","content":"hi"}]}`, nil)
	if res.status != 429 || !contains(res.body, `"error":{`) {
		t.Fatalf("chat completion over the limit: %d %s", res.status, res.body)
	}
}

// Two replicas sharing Redis enforce one limit between them.
func TestReplicasSharingRedisEnforceOneLimit(t *testing.T) {
	url := os.Getenv("AGATE_TEST_REDIS")
	if url == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("AGATE_TEST_REDIS is not set; .ci/run sets it after scripts/services.sh up")
		}
		t.Skip("set AGATE_TEST_REDIS=redis://127.0.0.1:6379/0 to run against a real Redis")
	}
	u := newUpstream(t)
	env := map[string]string{"REDIS_URL": url, "AGATE_TENANT_RPM": "3", "AGATE_REPLICAS": "2",
		"AGATE_DEFAULT_TENANT": "t-" + uuid.NewString()[:8]}
	a, b := start(t, withUpstream(u, env)), start(t, withUpstream(u, env))
	allowed := 0
	for i := range 8 {
		g := a
		if i%2 == 1 {
			g = b
		}
		if res := do(t, "POST", g.URL+"/v1/session/message", `{"message":"hi"}`, nil); res.status == 200 {
			allowed++
		}
	}
	if allowed != 3 {
		t.Fatalf("%d messages allowed across two replicas, want the shared limit of 3", allowed)
	}
	var health struct {
		Components map[string]string `json:"components"`
	}
	do(t, "GET", a.URL+"/v1/health", "", nil).json(t, &health)
	if health.Components["redis"] != "ok" {
		t.Fatalf("health components = %v, want redis ok", health.Components)
	}
}

func contains(b []byte, s string) bool { return strings.Contains(string(b), s) }

// The same turn, end to end, on the PostgreSQL store, surviving a restart.
func TestChatTurnOnPostgresSurvivesRestart(t *testing.T) {
	dsn := os.Getenv("AGATE_TEST_POSTGRES")
	if dsn == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("AGATE_TEST_POSTGRES is not set; make test sets it from scripts/services.sh up")
		}
		t.Skip("set AGATE_TEST_POSTGRES to run against a real PostgreSQL")
	}
	u := newUpstream(t)
	env := withUpstream(u, map[string]string{"POSTGRES_DSN": dsn, "AGATE_DEFAULT_TENANT": "t-" + uuid.NewString()[:8]})
	g := start(t, env)
	a := g.send(t, "", "stored in postgres")
	frames := g.subscribe(t, a.SessionID, "").untilFinal(t)
	if got := frames[len(frames)-1].Data.Message; got != reply("stored in postgres") {
		t.Fatalf("final = %q", got)
	}
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	g = start(t, env)
	var hist struct {
		Messages []struct{ Message string } `json:"messages"`
	}
	do(t, "GET", g.URL+"/v1/sessions/"+a.SessionID+"/history", "", nil).json(t, &hist)
	if len(hist.Messages) != 2 || hist.Messages[1].Message != reply("stored in postgres") {
		t.Fatalf("history after restart = %+v", hist.Messages)
	}
}
