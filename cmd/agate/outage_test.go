package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/internal/testsvc"
	"github.com/google/uuid"
)

// The outage tests start private servers (internal/testsvc), so that stopping them never
// disturbs the shared ones; they run with the other real-service tests, which set env.

// needService skips t unless env names a real service, or fails it in CI, where the
// real-service tests must run (scripts/services.sh installs the servers' binaries).
func needService(t *testing.T, env string) {
	t.Helper()
	if os.Getenv(env) != "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not set; make test sets it from scripts/services.sh up", env)
	}
	t.Skipf("set %s to run the outage tests (they start private servers)", env)
}

type healthReport struct {
	Status     string            `json:"status"`
	Components map[string]string `json:"components"`
}

// healthOf returns /v1/health's response and what it reports.
func healthOf(t *testing.T, g *testGateway) (response, healthReport) {
	t.Helper()
	res := do(t, "GET", g.URL+"/v1/health", "", nil)
	var h healthReport
	res.json(t, &h)
	return res, h
}

// wantRetryAfter fails t unless res asks the client to retry within a minute.
func wantRetryAfter(t *testing.T, what string, res response) {
	t.Helper()
	if s, err := strconv.Atoi(res.header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
		t.Errorf("%s: Retry-After = %q, want 1..60 seconds", what, res.header.Get("Retry-After"))
	}
}

// TestPostgresOutageAnswers503AndRecovers stops PostgreSQL under a running gateway: a
// message is refused with 503 unavailable and Retry-After (nothing stored), health says the
// store is down; once the server is back the same gateway takes the next message of the
// same session and answers it, and the session holds no trace of the refused one.
func TestPostgresOutageAnswers503AndRecovers(t *testing.T) {
	needService(t, "AGATE_TEST_POSTGRES")
	pg := testsvc.StartPostgres(t)
	g := start(t, withUpstream(newUpstream(t), map[string]string{
		"POSTGRES_DSN": pg.DSN(), "POSTGRES_STATEMENT_TIMEOUT": "2s",
	}))

	a := g.send(t, "", "before the outage")
	live := g.subscribe(t, a.SessionID, "") // stays open through the outage
	frames := live.untilFinal(t)
	if got := frames[len(frames)-1].Data.Message; got != reply("before the outage") {
		t.Fatalf("final before the outage = %q", got)
	}
	cursor := frames[len(frames)-1].ID

	pg.Stop(t)
	body, _ := json.Marshal(map[string]string{"session_id": a.SessionID, "message": "during the outage"})
	res := do(t, "POST", g.URL+"/v1/session/message", string(body), nil)
	var e struct {
		Detail    string     `json:"detail"`
		Code      agate.Code `json:"code"`
		RequestID string     `json:"request_id"`
	}
	res.json(t, &e)
	if res.status != http.StatusServiceUnavailable || e.Code != agate.EUnavailable || e.RequestID == "" {
		t.Errorf("message while the store is down: %d %s, want 503 with code %q", res.status, res.body, agate.EUnavailable)
	}
	wantRetryAfter(t, "message while the store is down", res)
	if u, _ := url.Parse(pg.DSN()); strings.Contains(e.Detail, u.Port()) || strings.Contains(e.Detail, "127.0.0.1") {
		t.Errorf("the 503 tells the client internal details: %q", e.Detail)
	}

	res, h := healthOf(t, g)
	if res.status != http.StatusServiceUnavailable || h.Status != "down" || h.Components["store"] != "down" {
		t.Errorf("health while the store is down: %d %s, want 503, status down, store down", res.status, res.body)
	}
	wantRetryAfter(t, "health while the store is down", res)
	if res := do(t, "GET", g.URL+"/readyz", "", nil); res.status != http.StatusServiceUnavailable {
		t.Errorf("readyz while the store is down: %d %s, want 503", res.status, res.body)
	}

	pg.Start(t) // the same data directory: the session is still there
	b := g.send(t, a.SessionID, "after the outage")
	for _, s := range []struct {
		name   string
		stream *sse
	}{{"stream open through the outage", live}, {"stream resumed after it", g.subscribe(t, a.SessionID, cursor)}} {
		name, frames := s.name, s.stream.untilFinal(t)
		if frames[0].Event != agate.TypeUserMessage || frames[0].Data.Message != "after the outage" {
			t.Errorf("%s: first event = %s %q, want the user message %q", name, frames[0].Event, frames[0].Data.Message, "after the outage")
		}
		if got := frames[len(frames)-1].Data.Message; got != reply("after the outage") {
			t.Errorf("%s: final = %q, want %q", name, got, reply("after the outage"))
		}
	}
	if res, h := healthOf(t, g); res.status != http.StatusOK || h.Components["store"] != "ok" {
		t.Errorf("health after the outage: %d %s, want 200 with store ok", res.status, res.body)
	}

	var page struct {
		Events []agate.Event `json:"events"`
	}
	do(t, "GET", g.URL+"/v1/sessions/"+a.SessionID+"/events?limit=1000", "", nil).json(t, &page)
	for i, ev := range page.Events {
		if ev.Seq != int64(i+1) {
			t.Errorf("stored event %d has seq %d, want %d: the refused message left a gap", i, ev.Seq, i+1)
		}
		if strings.Contains(ev.Message, "during the outage") {
			t.Errorf("stored event %d (%s) holds the refused message: %q", ev.Seq, ev.Type, ev.Message)
		}
	}
	if want := mustSeq(t, cursor) + 1; b.Seq != want {
		t.Errorf("message after the outage got seq %d, want %d (right after the first turn)", b.Seq, want)
	}
	if n := len(page.Events); n == 0 || page.Events[n-1].Type != agate.TypeFinal || page.Events[n-1].Message != reply("after the outage") {
		t.Errorf("stored events end with %+v, want the final reply to the message after the outage", page.Events[max(n-1, 0):])
	}
}

func mustSeq(t *testing.T, id string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		t.Fatalf("SSE id %q is not a seq", id)
	}
	return n
}

// TestRedisOutageDegradesAndRecovers kills Redis under a running gateway: messages are
// still served, the tenant's limit still holds (each replica enforces its share in
// process), and health says degraded, not down; once Redis is back the same gateway
// decides limits through it again and health says ok.
func TestRedisOutageDegradesAndRecovers(t *testing.T) {
	needService(t, "AGATE_TEST_REDIS")
	rd := testsvc.StartRedis(t)
	const rpm = 5 // one every 12s: nothing is replenished while the test runs
	g := start(t, withUpstream(newUpstream(t), map[string]string{
		"REDIS_URL": rd.URL(), "AGATE_TENANT_RPM": strconv.Itoa(rpm), "AGATE_REPLICAS": "1",
		"AGATE_DEFAULT_TENANT": "t-" + uuid.NewString()[:8],
	}))
	send := func(what string) response {
		t.Helper()
		res := do(t, "POST", g.URL+"/v1/session/message", `{"message":"hi"}`, nil)
		if res.status != http.StatusOK && res.status != http.StatusTooManyRequests {
			t.Fatalf("message %s: %d %s, want 200 or 429", what, res.status, res.body)
		}
		return res
	}

	if res := send("with Redis up"); res.status != http.StatusOK {
		t.Fatalf("first message with Redis up: %d %s", res.status, res.body)
	}
	if res, h := healthOf(t, g); res.status != http.StatusOK || h.Status != "ok" || h.Components["redis"] != "ok" {
		t.Fatalf("health with Redis up: %d %s, want 200, status ok, redis ok", res.status, res.body)
	}

	rd.Kill()
	// The in-process fallback has seen nothing yet: it grants the whole allowance, then
	// refuses with 429 and Retry-After.
	allowed, limited := 0, response{}
	for i := range rpm + 3 {
		res := send(fmt.Sprintf("%d with Redis down", i+1))
		if res.status == http.StatusOK {
			allowed++
		} else {
			limited = res
		}
	}
	if allowed != rpm {
		t.Errorf("Redis down: %d of %d messages allowed, want the limit of %d enforced in process", allowed, rpm+3, rpm)
	}
	if limited.status != http.StatusTooManyRequests || !contains(limited.body, `"rate_limited"`) {
		t.Errorf("over the limit with Redis down: %d %s, want 429 rate_limited", limited.status, limited.body)
	}
	wantRetryAfter(t, "over the limit with Redis down", limited)
	if res, h := healthOf(t, g); res.status != http.StatusOK || h.Status != "degraded" || h.Components["redis"] != "degraded" || h.Components["store"] != "ok" {
		t.Errorf("health with Redis down: %d %s, want 200, status degraded, redis degraded, store ok", res.status, res.body)
	}
	if res := do(t, "GET", g.URL+"/readyz", "", nil); res.status != http.StatusOK {
		t.Errorf("readyz with Redis down: %d %s, want 200 (Redis is optional)", res.status, res.body)
	}

	rd.Start() // empty: the tenant's state in Redis is gone
	// Health asks Redis itself: it recovers without a request.
	eventually(t, "health to say redis ok after Redis is back", 5*time.Second, func() bool {
		_, h := healthOf(t, g)
		return h.Status == "ok" && h.Components["redis"] == "ok"
	})
	// The limiter runs no goroutine: it tries Redis again on a request, at most once per
	// probe interval (redis.Config.ProbeEvery, 1s), so requests drive its recovery.
	fromRedis := 0
	eventually(t, "the limiter to use Redis again", 5*time.Second, func() bool {
		if send("while the limiter comes back").status == http.StatusOK {
			fromRedis++ // the fallback's allowance is spent: only Redis grants more
		}
		return fromRedis > 0
	})
	for i := range rpm + 1 {
		if send(fmt.Sprintf("%d after Redis is back", i+1)).status == http.StatusOK {
			fromRedis++
		}
	}
	if fromRedis != rpm {
		t.Errorf("Redis back: %d messages allowed, want the limit of %d decided by Redis (the fallback's allowance is spent)", fromRedis, rpm)
	}
}
