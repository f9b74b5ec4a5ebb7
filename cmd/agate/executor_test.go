package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestToolsRunOnExecutors: a catalogue whose tools run on executors (target kafka); the
// gateway sends a model's call through the outbox to tool.requests, an `agate executor`
// process runs it and the result comes back into the turn. Then an executor stopped in the
// middle of a call: the next executor runs it again, and the turn gets one result.
func TestToolsRunOnExecutors(t *testing.T) {
	dsn, cluster := freshPostgres(t), kafkaCluster(t)
	page, fetches := hangingPage(t)
	dir := catalogue(t, map[string]string{
		"echo": `{"name":"echo","description":"Echoes text.","target":"kafka","timeout":"20s",
		"parameters":{"type":"object","properties":{"text":{"type":"string"}},"required":["text"],"additionalProperties":false}}`,
		"http_fetch": `{"name":"http_fetch","description":"GETs a page.","target":"kafka","timeout":"20s","risk":"low",
		"parameters":{"type":"object","properties":{"url":{"type":"string"}},"required":["url"],"additionalProperties":false}}`,
	})
	host := strings.TrimPrefix(page.URL, "http://")
	env := map[string]string{
		"POSTGRES_DSN": dsn, "KAFKA_BOOTSTRAP_SERVERS": cluster.ListenAddrs()[0], "KAFKA_TIMEOUT": "2s",
		"AGATE_TOOLS_DIR": dir, "AGATE_TURN_TOOLS": "echo,http_fetch", "AGATE_FETCH_ALLOW": host,
	}
	u := newUpstream(t)
	g := start(t, withUpstream(u, env))
	exec1 := startChild(t, "executor", env)

	u.toolPlan.Store(&[]scriptedCall{{"echo", `{"text":"via an executor"}`}})
	a := g.send(t, "", "echo it")
	frames := g.subscribe(t, a.SessionID, "").untilFinal(t)
	if final := frames[len(frames)-1].Data; final.Message != reply("tool said via an executor") {
		t.Fatalf("final = %q %v", final.Message, final.Metadata)
	}

	// The executor is stopped while the page hangs; another one takes the request.
	u.toolPlan.Store(&[]scriptedCall{{"http_fetch", `{"url":"` + page.URL + `/"}`}})
	b := g.send(t, a.SessionID, "fetch it")
	eventually(t, "the executor to fetch the page", 20*time.Second, func() bool { return fetches.Load() == 1 })
	if err := exec1.stop(); err != nil {
		t.Fatalf("stop the executor: %v", err)
	}
	startChild(t, "executor", env)
	s := g.subscribe(t, b.SessionID, frames[len(frames)-1].ID)
	rest := s.untilFinal(t)
	results := 0
	for _, f := range rest {
		if f.Event == agate.TypeToolResult {
			results++
			if f.Data.Metadata["status"] != "ok" || !strings.Contains(f.Data.Message, "the page") {
				t.Errorf("tool result = %q %v", f.Data.Message, f.Data.Metadata)
			}
		}
	}
	if results != 1 {
		t.Errorf("%d tool results in the turn, want 1", results)
	}
	if final := rest[len(rest)-1].Data; final.Metadata["status"] != agate.StatusOK || !strings.Contains(final.Message, "the page") {
		t.Errorf("final = %q %v", final.Message, final.Metadata)
	}
	if n := fetches.Load(); n != 2 {
		t.Errorf("the page was fetched %d times, want 2 (once by each executor)", n)
	}
	var page2 struct {
		Events []agate.Event `json:"events"`
	}
	do(t, "GET", g.URL+"/v1/sessions/"+b.SessionID+"/events", "", nil).json(t, &page2)
	stored := 0
	for _, ev := range page2.Events {
		if ev.Type == agate.TypeToolResult {
			stored++
		}
	}
	if stored != 2 { // echo's and http_fetch's
		raw, _ := json.Marshal(page2.Events)
		t.Errorf("%d tool results stored, want 2: %s", stored, raw)
	}
}

// startChild runs `agate <cmd>` as a child process, ready once it printed its first line.
func startChild(t *testing.T, cmd string, env map[string]string) *testGateway {
	t.Helper()
	return startProcess(t, overlay(env, map[string]string{envChild: cmd}))
}

// TestToolWithoutExecutorTimesOut: nobody runs the request; the call ends at the tool's
// timeout with an error result the model is told about, and the turn answers.
func TestToolWithoutExecutorTimesOut(t *testing.T) {
	dsn, cluster := freshPostgres(t), kafkaCluster(t)
	dir := catalogue(t, map[string]string{"echo": `{"name":"echo","description":"Echoes.","target":"kafka","timeout":"1s",
		"parameters":{"type":"object","properties":{"text":{"type":"string"}}}}`})
	u := newUpstream(t)
	u.toolPlan.Store(&[]scriptedCall{{"echo", `{"text":"anyone?"}`}})
	g := start(t, withUpstream(u, map[string]string{"POSTGRES_DSN": dsn, "KAFKA_BOOTSTRAP_SERVERS": cluster.ListenAddrs()[0],
		"AGATE_TOOLS_DIR": dir, "AGATE_TURN_TOOLS": "echo"}))
	a := g.send(t, "", "echo it")
	frames := g.subscribe(t, a.SessionID, "").untilFinal(t)
	var result *agate.Event
	for i, f := range frames {
		if f.Event == agate.TypeToolResult {
			result = &frames[i].Data
		}
	}
	if result == nil || result.Metadata["status"] != "error" || !strings.Contains(result.Message, "did not answer within 1s") {
		t.Fatalf("tool result = %+v", result)
	}
	if final := frames[len(frames)-1].Data; final.Metadata["status"] != agate.StatusOK {
		t.Errorf("final = %q %v", final.Message, final.Metadata)
	}
}

// TestExecutorRunsParallelCallsAtOnce: the three calls of one model message are run at
// once, not one after another: the page answers only once all three fetches are in (or
// after 5s, when the test fails), and all three calls answer.
func TestExecutorRunsParallelCallsAtOnce(t *testing.T) {
	dsn, cluster := freshPostgres(t), kafkaCluster(t)
	var mu sync.Mutex
	inFlight, most := 0, 0
	all := make(chan struct{})
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inFlight++
		if most = max(most, inFlight); inFlight == 3 {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "slow page")
	}))
	t.Cleanup(page.Close)
	dir := catalogue(t, map[string]string{"http_fetch": `{"name":"http_fetch","description":"GETs a page.",
		"target":"kafka","timeout":"30s","risk":"low","parameters":{"type":"object","properties":{"url":{"type":"string"}},"required":["url"]}}`})
	env := map[string]string{"POSTGRES_DSN": dsn, "KAFKA_BOOTSTRAP_SERVERS": cluster.ListenAddrs()[0],
		"AGATE_TOOLS_DIR": dir, "AGATE_TURN_TOOLS": "http_fetch", "AGATE_FETCH_ALLOW": strings.TrimPrefix(page.URL, "http://")}
	u := newUpstream(t)
	call := scriptedCall{"http_fetch", `{"url":"` + page.URL + `/"}`}
	u.toolPlan.Store(&[]scriptedCall{call, call, call})
	g := start(t, withUpstream(u, env))
	startChild(t, "executor", env)
	a := g.send(t, "", "fetch three times")
	for _, f := range g.subscribe(t, a.SessionID, "").untilFinal(t) {
		if f.Event == agate.TypeToolResult && f.Data.Metadata["status"] != "ok" {
			t.Errorf("tool result %q %v", f.Data.Message, f.Data.Metadata)
		}
	}
	mu.Lock()
	if most != 3 {
		t.Errorf("at most %d fetches ran at once, want the 3 calls together", most)
	}
	mu.Unlock()

	// W3C trace context: the turn is the trace, each call a span, on requests and results.
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...),
		kgo.ConsumeTopics(agate.TopicToolRequests, agate.TopicToolResults), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	trace := "00-" + strings.ReplaceAll(a.EventID, "-", "") + "-"
	seen := map[string]int{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for seen[agate.TopicToolRequests] < 3 || seen[agate.TopicToolResults] < 3 {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("records seen: %v", seen)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			seen[r.Topic]++
			var tp string
			for _, h := range r.Headers {
				if h.Key == "traceparent" {
					tp = string(h.Value)
				}
			}
			if !strings.HasPrefix(tp, trace) || len(tp) != 55 {
				t.Errorf("%s record traceparent %q, want the turn's trace %s…", r.Topic, tp, trace)
			}
		})
	}
}

// TestExecutorKilledMidCall: an executor killed (SIGKILL, no goodbye) in the middle of a
// call; once the group notices (KAFKA_SESSION_TIMEOUT), another executor runs the call
// again and the turn gets exactly one result.
func TestExecutorKilledMidCall(t *testing.T) {
	dsn, cluster := freshPostgres(t), kafkaCluster(t)
	page, fetches := hangingPage(t)
	dir := catalogue(t, map[string]string{"http_fetch": `{"name":"http_fetch","description":"GETs a page.",
		"target":"kafka","timeout":"40s","risk":"low","parameters":{"type":"object","properties":{"url":{"type":"string"}},"required":["url"]}}`})
	env := map[string]string{"POSTGRES_DSN": dsn, "KAFKA_BOOTSTRAP_SERVERS": cluster.ListenAddrs()[0], "KAFKA_SESSION_TIMEOUT": "6s",
		"AGATE_TOOLS_DIR": dir, "AGATE_TURN_TOOLS": "http_fetch", "AGATE_FETCH_ALLOW": strings.TrimPrefix(page.URL, "http://")}
	u := newUpstream(t)
	u.toolPlan.Store(&[]scriptedCall{{"http_fetch", `{"url":"` + page.URL + `/"}`}})
	g := start(t, withUpstream(u, env))
	exec1 := startChild(t, "executor", env)
	a := g.send(t, "", "fetch it")
	eventually(t, "the executor to fetch the page", 20*time.Second, func() bool { return fetches.Load() == 1 })
	exec1.kill()
	startChild(t, "executor", env)
	results := 0
	frames := g.subscribe(t, a.SessionID, "").untilFinal(t)
	for _, f := range frames {
		if f.Event == agate.TypeToolResult {
			results++
			if f.Data.Metadata["status"] != "ok" || !strings.Contains(f.Data.Message, "the page") {
				t.Errorf("tool result = %q %v", f.Data.Message, f.Data.Metadata)
			}
		}
	}
	if results != 1 || fetches.Load() != 2 {
		t.Errorf("%d results in the turn (want 1), %d fetches (want 2)", results, fetches.Load())
	}
}

// kafkaCluster starts a kfake broker on a loopback port for the test.
func kafkaCluster(t *testing.T) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// hangingPage serves "the page", but hangs on its first request until the test ends (or
// the client goes); it counts the requests.
func hangingPage(t *testing.T) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	fetches := new(atomic.Int32)
	hang := make(chan struct{})
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fetches.Add(1) == 1 {
			select {
			case <-hang:
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "the page")
	}))
	t.Cleanup(func() { close(hang); page.Close() })
	return page, fetches
}

// catalogue writes a tool catalogue (name → spec) into a directory for AGATE_TOOLS_DIR.
func catalogue(t *testing.T, specs map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, spec := range specs {
		if err := os.WriteFile(filepath.Join(dir, name+".json"), []byte(spec), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
