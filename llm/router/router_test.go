package router_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/llmtest"
	"github.com/agate-gw/agate/llm/openai"
	"github.com/agate-gw/agate/llm/router"
	"github.com/agate-gw/agate/turn"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var _ turn.Model = (*router.Router)(nil)

// Test upstreams speaking OpenAI's wire format.

// upstream answers its n-th request with the n-th handler, and the last one after that.
type upstream struct {
	srv      *httptest.Server
	handlers []http.HandlerFunc
	mu       sync.Mutex
	models   []string // the model of each request, in order
}

func newUpstream(t *testing.T, handlers ...http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{handlers: handlers}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	var body struct{ Model string }
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	io.Copy(io.Discard, r.Body) // so that the server notices when the client goes away
	u.mu.Lock()
	n := len(u.models)
	u.models = append(u.models, body.Model)
	u.mu.Unlock()
	u.handlers[min(n, len(u.handlers)-1)](w, r)
}

// calls returns the model of every request received.
func (u *upstream) calls() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.models...)
}

// client returns the real OpenAI client pointed at u.
func (u *upstream) client(cfg openai.Config) *openai.Client {
	cfg.BaseURL, cfg.APIKey, cfg.Model = u.srv.URL, "k", "m"
	return openai.New(cfg)
}

// chunk is one chat.completion.chunk event with text.
func chunk(text string) string {
	return fmt.Sprintf("data: {\"object\":\"chat.completion.chunk\",\"model\":\"served\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q},\"finish_reason\":null}]}\n\n", text)
}

const (
	roleChunk   = "data: {\"object\":\"chat.completion.chunk\",\"model\":\"served\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n"
	finishChunk = "data: {\"object\":\"chat.completion.chunk\",\"model\":\"served\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
)

// stream writes an event stream in pieces, flushing after each; then, if stall, waits for
// the client to go away.
func stream(stall bool, pieces ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		w.WriteHeader(http.StatusOK)
		if rc.Flush() != nil {
			return
		}
		for _, p := range pieces {
			if _, err := io.WriteString(w, p); err != nil || rc.Flush() != nil {
				return
			}
		}
		if stall {
			<-r.Context().Done()
		}
	}
}

// ok streams a complete reply of the given pieces.
func ok(pieces ...string) http.HandlerFunc {
	var events []string
	for _, p := range append([]string{}, pieces...) {
		events = append(events, chunk(p))
	}
	return stream(false, append(append([]string{roleChunk}, events...), finishChunk)...)
}

// status answers with an OpenAI error object, status code and header pairs.
func status(code int, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"error":{"message":"status %d"}}`, code)
	}
}

// reset closes the connection abruptly before answering.
func reset(w http.ResponseWriter, r *http.Request) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // RST, not FIN
	}
	conn.Close()
}

// abortAfter streams the pieces, then cuts the connection.
func abortAfter(pieces ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		stream(false, pieces...)(w, r)
		panic(http.ErrAbortHandler)
	}
}

// The router under test.

// sleeps records the waits the router asks for instead of waiting.
type sleeps struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d = append(s.d, d)
	return ctx.Err()
}

func (s *sleeps) got() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.d...)
}

func newRouter(t *testing.T, providers map[string]router.Model, cfg router.Config) (*router.Router, *prometheus.Registry, *sleeps) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	r, err := router.New(providers, cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	s := &sleeps{}
	router.SetSleep(r, s.sleep)
	return r, reg, s
}

func target(s string) router.Target {
	t, err := router.ParseTarget(s)
	if err != nil {
		panic(err)
	}
	return t
}

func chain(targets ...string) []router.Target {
	var out []router.Target
	for _, s := range targets {
		out = append(out, target(s))
	}
	return out
}

func ask(model string) agate.ModelRequest {
	return agate.ModelRequest{Model: model, Messages: []agate.Message{{Role: agate.RoleUser, Content: "hi"}}}
}

// generate calls r and returns the reply, the text that reached the client and the error.
func generate(r *router.Router, ctx context.Context, model string) (agate.Reply, string, error) {
	var sent strings.Builder
	reply, err := r.Generate(ctx, ask(model), func(d agate.Delta) error {
		sent.WriteString(d.Text)
		return nil
	})
	return reply, sent.String(), err
}

func wantCode(t *testing.T, err error, want agate.Code) {
	t.Helper()
	if got := agate.ErrorCode(err); got != want {
		t.Fatalf("error code = %q, want %q (error %v)", got, want, err)
	}
}

func wantMetrics(t *testing.T, reg prometheus.Gatherer, expected string, names ...string) {
	t.Helper()
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), names...); err != nil {
		t.Error(err)
	}
}

const (
	stateHead     = "# HELP circuit_breaker_state State of the circuit breaker of a provider's model: 0 closed, 1 half-open, 2 open.\n# TYPE circuit_breaker_state gauge\n"
	openedHead    = "# HELP circuit_breaker_open_total Times the circuit breaker of a provider's model opened.\n# TYPE circuit_breaker_open_total counter\n"
	fallbacksHead = "# HELP llm_fallbacks_total Requests for a model alias passed from one target of its chain to the next (failed or breaker open).\n# TYPE llm_fallbacks_total counter\n"
	retriesHead   = "# HELP llm_retries_total Retries of a provider's model, by the error code of the failed attempt.\n# TYPE llm_retries_total counter\n"
)

// Done-when behaviours, through the real OpenAI client.

func TestRateLimitedRequestWaitsOutRetryAfterThenSucceeds(t *testing.T) {
	up := newUpstream(t, status(http.StatusTooManyRequests, "Retry-After", "3"), ok("Hello"))
	r, reg, s := newRouter(t, map[string]router.Model{"openai": up.client(openai.Config{})},
		router.Config{Routes: map[string][]router.Target{"default": chain("openai/gpt-4.1")}})

	reply, sent, err := generate(r, t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if sent != "Hello" || reply.Text != "Hello" || reply.Model != "served" {
		t.Errorf("sent %q, reply %+v; want Hello from model served", sent, reply)
	}
	if diff := cmp.Diff([]string{"gpt-4.1", "gpt-4.1"}, up.calls()); diff != "" {
		t.Errorf("upstream requests (-want +got):\n%s", diff)
	}
	if got := s.got(); len(got) != 1 || got[0] < 3*time.Second {
		t.Errorf("waits = %v, want one of at least the 3s of Retry-After", got)
	}
	wantMetrics(t, reg, retriesHead+`llm_retries_total{code="upstream_rate_limited",model="gpt-4.1",provider="openai"} 1
`, "llm_retries_total")
}

func TestServerErrorIsRetriedThenFallsBackToTheNextTarget(t *testing.T) {
	a := newUpstream(t, status(http.StatusInternalServerError))
	b := newUpstream(t, ok("Hi"))
	r, reg, s := newRouter(t, map[string]router.Model{
		"a": a.client(openai.Config{}),
		"b": b.client(openai.Config{}),
	}, router.Config{Routes: map[string][]router.Target{"default": chain("a/m1", "b/m2")}})

	reply, sent, err := generate(r, t.Context(), "default")
	if err != nil {
		t.Fatal(err)
	}
	if sent != "Hi" || reply.Text != "Hi" {
		t.Errorf("sent %q, reply %+v; want Hi", sent, reply)
	}
	if diff := cmp.Diff([]string{"m1", "m1", "m1"}, a.calls()); diff != "" {
		t.Errorf("requests to a (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"m2"}, b.calls()); diff != "" {
		t.Errorf("requests to b (-want +got):\n%s", diff)
	}
	// Jittered exponential backoff: 200ms then 400ms, less up to half.
	got := s.got()
	if len(got) != 2 || got[0] < 100*time.Millisecond || got[0] > 200*time.Millisecond ||
		got[1] < 200*time.Millisecond || got[1] > 400*time.Millisecond {
		t.Errorf("waits = %v, want [100ms..200ms, 200ms..400ms]", got)
	}
	wantMetrics(t, reg, retriesHead+`llm_retries_total{code="upstream_error",model="m1",provider="a"} 2
`+fallbacksHead+`llm_fallbacks_total{alias="default",from="a/m1",to="b/m2"} 1
`, "llm_retries_total", "llm_fallbacks_total")
}

func TestConnectionResetBeforeTheFirstByteIsRetried(t *testing.T) {
	up := newUpstream(t, reset, ok("Hi"))
	r, reg, _ := newRouter(t, map[string]router.Model{"openai": up.client(openai.Config{})},
		router.Config{Routes: map[string][]router.Target{"default": chain("openai/m")}})

	reply, sent, err := generate(r, t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if sent != "Hi" || reply.Text != "Hi" {
		t.Errorf("sent %q, reply %+v; want Hi once", sent, reply)
	}
	if n := len(up.calls()); n != 2 {
		t.Errorf("upstream got %d requests, want 2", n)
	}
	wantMetrics(t, reg, retriesHead+`llm_retries_total{code="upstream_error",model="m",provider="openai"} 1
`, "llm_retries_total")
}

// After the first byte a failure ends the request: retrying would send the client the
// same text twice, and falling back would splice two different replies.
func TestFailureAfterTheFirstByteEndsTheRequestWithoutRepeatingText(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		cfg  openai.Config
		want agate.Code
	}{
		{"connection reset", abortAfter(roleChunk, chunk("Hel")), openai.Config{}, agate.EStreamTruncated},
		{"stream ends without [DONE] or finish_reason", stream(false, roleChunk, chunk("Hel")), openai.Config{}, agate.EStreamTruncated},
		{"stream stalls", stream(true, roleChunk, chunk("Hel")), openai.Config{IdleTimeout: 50 * time.Millisecond}, agate.EUpstreamTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newUpstream(t, tc.h, ok("Hello"))
			b := newUpstream(t, ok("Other"))
			r, reg, s := newRouter(t, map[string]router.Model{"a": a.client(tc.cfg), "b": b.client(openai.Config{})},
				router.Config{Routes: map[string][]router.Target{"default": chain("a/m", "b/m")}})

			reply, sent, err := generate(r, t.Context(), "")
			wantCode(t, err, tc.want)
			if sent != "Hel" || reply.Text != "Hel" {
				t.Errorf("sent %q, reply text %q; want Hel once", sent, reply.Text)
			}
			if na, nb := len(a.calls()), len(b.calls()); na != 1 || nb != 0 {
				t.Errorf("requests: a %d, b %d; want 1, 0", na, nb)
			}
			if got := s.got(); len(got) != 0 {
				t.Errorf("waited %v, want no retry", got)
			}
			wantMetrics(t, reg, "", "llm_retries_total", "llm_fallbacks_total")
		})
	}
}

// The same failures before anything reached the client are retried.
func TestFailureBeforeTheFirstByteIsRetried(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		cfg  openai.Config
		want agate.Code
	}{
		{"stream ends without [DONE] or finish_reason", stream(false, roleChunk), openai.Config{}, agate.EStreamTruncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t, tc.h, ok("Hello"))
			r, reg, _ := newRouter(t, map[string]router.Model{"a": up.client(tc.cfg)},
				router.Config{Routes: map[string][]router.Target{"default": chain("a/m")}})

			reply, sent, err := generate(r, t.Context(), "")
			if err != nil {
				t.Fatal(err)
			}
			if sent != "Hello" || reply.Text != "Hello" {
				t.Errorf("sent %q, reply text %q; want Hello once", sent, reply.Text)
			}
			wantMetrics(t, reg, retriesHead+fmt.Sprintf(`llm_retries_total{code=%q,model="m",provider="a"} 1
`, tc.want), "llm_retries_total")
		})
	}
}

// A provider that let a whole timeout pass is not tried again: the next target is.
func TestTimeoutBeforeTheFirstByteFallsBackWithoutRetry(t *testing.T) {
	a := newUpstream(t, stream(true, roleChunk))
	b := newUpstream(t, ok("from b"))
	r, _, s := newRouter(t, map[string]router.Model{
		"a": a.client(openai.Config{IdleTimeout: 50 * time.Millisecond}), "b": b.client(openai.Config{}),
	}, router.Config{Routes: map[string][]router.Target{"default": chain("a/m", "b/m")}})
	reply, _, err := generate(r, t.Context(), "")
	if err != nil || reply.Text != "from b" {
		t.Fatalf("reply %q, %v; want b's", reply.Text, err)
	}
	if na, nb := len(a.calls()), len(b.calls()); na != 1 || nb != 1 || len(s.got()) != 0 {
		t.Fatalf("requests a %d, b %d, waits %v; want 1, 1 and no retry wait", na, nb, s.got())
	}
}

// A caller that takes no deltas (a non-streaming client) has received nothing, so a
// reply cut off midway is still retried.
func TestWithoutEmitAMidStreamFailureIsStillRetried(t *testing.T) {
	up := newUpstream(t, abortAfter(roleChunk, chunk("Hel")), ok("Hello"))
	r, _, _ := newRouter(t, map[string]router.Model{"a": up.client(openai.Config{})},
		router.Config{Routes: map[string][]router.Target{"default": chain("a/m")}})
	reply, err := r.Generate(t.Context(), agate.ModelRequest{Messages: []agate.Message{{Role: "user", Content: "hi"}}}, nil)
	if err != nil || reply.Text != "Hello" || len(up.calls()) != 2 {
		t.Fatalf("reply %q, %v after %d calls; want Hello after a retry", reply.Text, err, len(up.calls()))
	}
}

// A provider that panics during a half-open probe still reports a failure, so the probe
// slot is freed and the breaker can close later.
func TestPanicDuringAProbeDoesNotWedgeTheBreaker(t *testing.T) {
	var panicking atomic.Bool
	panicking.Store(true)
	m := panicModel{panicking: &panicking}
	r, _, _ := newRouter(t, map[string]router.Model{"a": m},
		router.Config{Routes: map[string][]router.Target{"default": chain("a/m")},
			Breaker: router.BreakerConfig{Failures: 1, OpenFor: 20 * time.Millisecond}})
	call := func() (err error) {
		defer func() {
			if recover() != nil {
				err = errors.New("panicked")
			}
		}()
		_, err = r.Generate(t.Context(), agate.ModelRequest{}, nil)
		return err
	}
	_ = call() // opens the breaker
	for r.Breakers()[0].State == "open" {
		time.Sleep(5 * time.Millisecond)
	}
	_ = call() // the half-open probe panics
	panicking.Store(false)
	for r.Breakers()[0].State == "open" {
		time.Sleep(5 * time.Millisecond)
	}
	if err := call(); err != nil {
		t.Fatalf("after the provider recovered: %v (breaker %+v)", err, r.Breakers())
	}
}

type panicModel struct{ panicking *atomic.Bool }

func (m panicModel) Generate(context.Context, agate.ModelRequest, func(agate.Delta) error) (agate.Reply, error) {
	if m.panicking.Load() {
		panic("provider bug")
	}
	return agate.Reply{Text: "ok"}, nil
}

func TestBreakerOpensSkipsTheTargetThenProbesAndCloses(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	healthy := ok("from a")
	a := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			status(http.StatusBadGateway)(w, r)
			return
		}
		healthy(w, r)
	})
	b := newUpstream(t, ok("from b"))
	r, reg, _ := newRouter(t, map[string]router.Model{"a": a.client(openai.Config{}), "b": b.client(openai.Config{})},
		router.Config{
			Routes:  map[string][]router.Target{"default": chain("a/m", "b/m")},
			Retries: -1,
			Breaker: router.BreakerConfig{Failures: 2, OpenFor: 50 * time.Millisecond},
		})
	answer := func() string {
		t.Helper()
		reply, _, err := generate(r, t.Context(), "")
		if err != nil {
			t.Fatal(err)
		}
		return reply.Text
	}
	state := func(s string) string {
		return stateHead + `circuit_breaker_state{model="m",provider="a"} ` + s + "\n" +
			`circuit_breaker_state{model="m",provider="b"} 0` + "\n"
	}
	waitHalfOpen := func() {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); r.Breakers()[0].State != "half-open"; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("breaker of a/m did not half-open: %+v", r.Breakers())
			}
		}
	}

	// Two failures in a row open a's breaker; b answers both times.
	for range 2 {
		if got := answer(); got != "from b" {
			t.Fatalf("answer %q, want from b", got)
		}
	}
	st := r.Breakers()
	if st[0].State != "open" || st[0].OpenUntil.IsZero() || st[1].State != "closed" {
		t.Fatalf("breakers = %+v, want a/m open with OpenUntil, b/m closed", st)
	}
	wantMetrics(t, reg, state("2")+openedHead+`circuit_breaker_open_total{model="m",provider="a"} 1
circuit_breaker_open_total{model="m",provider="b"} 0
`, "circuit_breaker_state", "circuit_breaker_open_total")

	// While open, a is skipped without being called.
	if got := answer(); got != "from b" {
		t.Fatalf("answer %q, want from b", got)
	}
	if n := len(a.calls()); n != 2 {
		t.Fatalf("a got %d requests, want 2 (skipped while open)", n)
	}

	// Half-open: one probe, which fails and opens it again.
	waitHalfOpen()
	wantMetrics(t, reg, state("1"), "circuit_breaker_state")
	if got := answer(); got != "from b" {
		t.Fatalf("answer %q, want from b", got)
	}
	if n := len(a.calls()); n != 3 {
		t.Fatalf("a got %d requests, want 3 (one probe)", n)
	}
	if st := r.Breakers()[0]; st.State != "open" {
		t.Fatalf("after a failed probe: %+v, want open", st)
	}

	// Half-open again: the probe succeeds and closes it.
	failing.Store(false)
	waitHalfOpen()
	if got := answer(); got != "from a" {
		t.Fatalf("answer %q, want from a", got)
	}
	if got := answer(); got != "from a" {
		t.Fatalf("answer %q, want from a", got)
	}
	wantMetrics(t, reg, state("0")+openedHead+`circuit_breaker_open_total{model="m",provider="a"} 2
circuit_breaker_open_total{model="m",provider="b"} 0
`+fallbacksHead+`llm_fallbacks_total{alias="default",from="a/m",to="b/m"} 4
`, "circuit_breaker_state", "circuit_breaker_open_total", "llm_fallbacks_total")
	if diff := cmp.Diff([]router.BreakerStatus{
		{Provider: "a", Model: "m", State: "closed"},
		{Provider: "b", Model: "m", State: "closed"},
	}, r.Breakers()); diff != "" {
		t.Errorf("breakers (-want +got):\n%s", diff)
	}
}

func TestRefusedCredentialsFallBackWithoutRetry(t *testing.T) {
	a := newUpstream(t, status(http.StatusUnauthorized))
	b := newUpstream(t, ok("Hi"))
	r, reg, s := newRouter(t, map[string]router.Model{"a": a.client(openai.Config{}), "b": b.client(openai.Config{})},
		router.Config{Routes: map[string][]router.Target{"default": chain("a/m", "b/m")}})

	reply, _, err := generate(r, t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if reply.Text != "Hi" {
		t.Errorf("reply %+v, want Hi from b", reply)
	}
	if na, nb := len(a.calls()), len(b.calls()); na != 1 || nb != 1 {
		t.Errorf("requests: a %d, b %d; want 1, 1", na, nb)
	}
	if got := s.got(); len(got) != 0 {
		t.Errorf("waited %v, want no retry", got)
	}
	wantMetrics(t, reg, fallbacksHead+`llm_fallbacks_total{alias="default",from="a/m",to="b/m"} 1
`, "llm_retries_total", "llm_fallbacks_total")
	if st := r.Breakers()[0]; st.ConsecutiveFailures != 1 {
		t.Errorf("breaker of a/m = %+v, want the refusal counted", st)
	}
}

// Decisions, with scripted models.

var (
	errDown    = &agate.Error{Code: agate.EUpstream, Message: "down"}
	errInvalid = &agate.Error{Code: agate.EInvalid, Message: "bad request"}
)

func TestAllBreakersOpenSaysWhenToTryAgain(t *testing.T) {
	a := llmtest.New(llmtest.Fail(errDown))
	b := llmtest.New(llmtest.Fail(&agate.Error{Code: agate.EUpstreamTimeout, Message: "slow"}))
	r, _, _ := newRouter(t, map[string]router.Model{"a": a, "b": b}, router.Config{
		Routes:  map[string][]router.Target{"default": chain("a/m", "b/m")},
		Retries: -1,
		Breaker: router.BreakerConfig{Failures: 1},
	})

	_, _, err := generate(r, t.Context(), "")
	wantCode(t, err, agate.EUpstreamTimeout) // the last target's error

	_, _, err = generate(r, t.Context(), "")
	wantCode(t, err, agate.EUpstream)
	if a.Calls() != 1 || b.Calls() != 1 {
		t.Errorf("calls: a %d, b %d; want 1, 1 (skipped while open)", a.Calls(), b.Calls())
	}
	if ra := agate.RetryAfter(err); ra <= 25*time.Second || ra > 30*time.Second {
		t.Errorf("RetryAfter = %v, want about the 30s default OpenFor", ra)
	}
	if got, want := agate.ErrorMessage(err), `All providers for model "default" are failing; try again in 30s.`; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
}

func TestRateLimitsFallBackWithoutOpeningTheBreaker(t *testing.T) {
	a := llmtest.New(llmtest.Fail(&agate.Error{Code: agate.EUpstreamRate, Message: "slow down", RetryAfter: time.Minute}))
	b := llmtest.New(llmtest.Text("Hi"))
	r, _, s := newRouter(t, map[string]router.Model{"a": a, "b": b}, router.Config{
		Routes:  map[string][]router.Target{"default": chain("a/m", "b/m")},
		Breaker: router.BreakerConfig{Failures: 1},
	})
	for range 3 {
		if _, _, err := generate(r, t.Context(), ""); err != nil {
			t.Fatal(err)
		}
	}
	if a.Calls() != 3 || b.Calls() != 3 {
		t.Errorf("calls: a %d, b %d; want 3, 3 (a Retry-After over MaxRetryAfter falls back at once)", a.Calls(), b.Calls())
	}
	if got := s.got(); len(got) != 0 {
		t.Errorf("waited %v, want none", got)
	}
	if st := r.Breakers()[0]; st.State != "closed" || st.ConsecutiveFailures != 0 {
		t.Errorf("breaker of a/m = %+v, want closed and no failures", st)
	}
}

func TestInvalidRequestIsNeitherRetriedNorPassedOn(t *testing.T) {
	a := llmtest.New(llmtest.Fail(errInvalid))
	b := llmtest.New(llmtest.Text("Hi"))
	r, _, s := newRouter(t, map[string]router.Model{"a": a, "b": b}, router.Config{
		Routes:  map[string][]router.Target{"default": chain("a/m", "b/m")},
		Breaker: router.BreakerConfig{Failures: 1},
	})
	_, _, err := generate(r, t.Context(), "")
	if !errors.Is(err, errInvalid) {
		t.Fatalf("error %v, want the provider's", err)
	}
	if a.Calls() != 1 || b.Calls() != 0 || len(s.got()) != 0 {
		t.Errorf("calls: a %d, b %d, waits %v; want 1, 0, none", a.Calls(), b.Calls(), s.got())
	}
	if st := r.Breakers()[0]; st.State != "closed" || st.ConsecutiveFailures != 0 {
		t.Errorf("breaker of a/m = %+v, want closed and no failures", st)
	}
}

func TestCancelledRequestIsNotHeldAgainstTheProvider(t *testing.T) {
	a := llmtest.New(llmtest.Text("Hel").Hang())
	b := llmtest.New(llmtest.Text("Hi"))
	r, _, _ := newRouter(t, map[string]router.Model{"a": a, "b": b}, router.Config{
		Routes:  map[string][]router.Target{"default": chain("a/m", "b/m")},
		Breaker: router.BreakerConfig{Failures: 1},
	})
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-a.Blocked(1)
		cancel()
	}()
	_, sent, err := generate(r, ctx, "")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if sent != "Hel" || a.Calls() != 1 || b.Calls() != 0 {
		t.Errorf("sent %q, calls a %d b %d; want Hel, 1, 0", sent, a.Calls(), b.Calls())
	}
	if st := r.Breakers()[0]; st.State != "closed" || st.ConsecutiveFailures != 0 {
		t.Errorf("breaker of a/m = %+v, want closed and no failures", st)
	}
}

func TestClientGoneStopsWithoutRetry(t *testing.T) {
	a := llmtest.New(llmtest.Text("Hel", "lo"))
	r, _, s := newRouter(t, map[string]router.Model{"a": a}, router.Config{
		Routes: map[string][]router.Target{"default": chain("a/m")},
	})
	gone := errors.New("client gone")
	_, err := r.Generate(t.Context(), ask(""), func(agate.Delta) error { return gone })
	if !errors.Is(err, gone) || a.Calls() != 1 || len(s.got()) != 0 {
		t.Errorf("error %v, calls %d, waits %v; want emit's error, 1 call, no wait", err, a.Calls(), s.got())
	}
}

func TestRetryWaitsGrowToBackoffMax(t *testing.T) {
	a := llmtest.New(llmtest.Fail(errDown))
	r, _, s := newRouter(t, map[string]router.Model{"a": a}, router.Config{
		Routes:      map[string][]router.Target{"default": chain("a/m")},
		Retries:     5,
		BackoffBase: 100 * time.Millisecond,
		BackoffMax:  300 * time.Millisecond,
		Breaker:     router.BreakerConfig{Failures: 100},
	})
	_, _, err := generate(r, t.Context(), "")
	if !errors.Is(err, errDown) {
		t.Fatalf("error %v, want the provider's", err)
	}
	caps := []time.Duration{100, 200, 300, 300, 300}
	got := s.got()
	if len(got) != len(caps) || a.Calls() != 6 {
		t.Fatalf("waits %v, calls %d; want 5 waits, 6 calls", got, a.Calls())
	}
	for i, c := range caps {
		if c *= time.Millisecond; got[i] < c/2 || got[i] > c {
			t.Errorf("wait %d = %v, want within [%v, %v]", i, got[i], c/2, c)
		}
	}
}

func TestCancelDuringBackoffStops(t *testing.T) {
	a := llmtest.New(llmtest.Fail(errDown))
	r, err := router.New(map[string]router.Model{"a": a}, router.Config{
		Routes:      map[string][]router.Target{"default": chain("a/m")},
		BackoffBase: time.Hour,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	_, _, err = generate(r, ctx, "")
	// The deadline is nearer than the wait: no point waiting; the provider's error returns.
	if !errors.Is(err, errDown) || a.Calls() != 1 {
		t.Errorf("error %v after %d calls, want the provider's after 1", err, a.Calls())
	}

	ctx, cancel = context.WithCancel(t.Context())
	router.SetSleep(r, func(context.Context, time.Duration) error { cancel(); return context.Canceled })
	_, _, err = generate(r, ctx, "")
	if !errors.Is(err, context.Canceled) || a.Calls() != 2 {
		t.Errorf("error %v after %d calls, want context.Canceled after 2", err, a.Calls())
	}
}

func TestRequestsNameAliasesTargetsOrConcreteModels(t *testing.T) {
	a := llmtest.New()
	b := llmtest.New()
	r, _, _ := newRouter(t, map[string]router.Model{"a": a, "b": b}, router.Config{
		Routes: map[string][]router.Target{
			"default": chain("a/gpt-4.1", "b/claude"),
			"cheap":   chain("b/haiku"),
		},
	})
	for _, model := range []string{"", "default", "cheap", "b/sonnet", "gpt-4.1-mini", "meta-llama/llama-3"} {
		reply, _, err := generate(r, t.Context(), model)
		if err != nil {
			t.Fatalf("%q: %v", model, err)
		}
		_ = reply
	}
	var got []string
	for _, req := range a.Requests() {
		got = append(got, "a/"+req.Model)
	}
	for _, req := range b.Requests() {
		got = append(got, "b/"+req.Model)
	}
	want := []string{"a/gpt-4.1", "a/gpt-4.1", "a/gpt-4.1-mini", "a/meta-llama/llama-3", "b/haiku", "b/sonnet"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
	var breakers []string
	for _, s := range r.Breakers() {
		breakers = append(breakers, s.Provider+"/"+s.Model)
	}
	want = []string{"a/gpt-4.1", "a/gpt-4.1-mini", "a/meta-llama/llama-3", "b/claude", "b/haiku", "b/sonnet"}
	if diff := cmp.Diff(want, breakers); diff != "" {
		t.Errorf("breakers (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"cheap", "default", "a/gpt-4.1", "b/claude", "b/haiku"}, r.Models()); diff != "" {
		t.Errorf("Models (-want +got):\n%s", diff)
	}
}

func TestReplyNamesTheAnsweringModel(t *testing.T) {
	a := llmtest.New(llmtest.Fail(&agate.Error{Code: agate.EUpstreamAuth, Message: "no"}))
	b := llmtest.New(llmtest.Text("Hi").Model("claude-2025"))
	r, _, _ := newRouter(t, map[string]router.Model{"a": a, "b": b}, router.Config{
		Routes: map[string][]router.Target{"default": chain("a/m", "b/claude")},
	})
	reply, _, err := generate(r, t.Context(), "")
	if err != nil || reply.Model != "claude-2025" {
		t.Errorf("reply %+v, error %v; want model claude-2025", reply, err)
	}
}

func TestManyConcreteModelsShareABoundedSetOfBreakers(t *testing.T) {
	a := llmtest.New()
	r, _, _ := newRouter(t, map[string]router.Model{"a": a}, router.Config{
		Routes: map[string][]router.Target{"default": chain("a/m")},
	})
	for i := range 150 {
		if _, _, err := generate(r, t.Context(), fmt.Sprintf("model-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(r.Breakers()); n > 102 {
		t.Errorf("%d breakers for 150 model names, want them bounded", n)
	}
	if got := a.Requests()[149].Model; got != "model-149" {
		t.Errorf("request model %q, want model-149 still sent as named", got)
	}
}

// Past the bound, failures of client-named models never open the shared breaker, so one
// client's typos cannot shut out another client's valid model.
func TestTyposPastTheBoundDoNotShutOutOtherModels(t *testing.T) {
	fail := llmtest.Fail(agate.Errorf(agate.EUpstream, "model not found"))
	replies := make([]llmtest.Reply, 0, 130)
	for range 120 {
		replies = append(replies, fail)
	}
	a := llmtest.New(append(replies, llmtest.Text("fine"))...)
	r, _, _ := newRouter(t, map[string]router.Model{"a": a}, router.Config{
		Routes: map[string][]router.Target{"default": chain("a/m")}, Retries: -1,
		Breaker: router.BreakerConfig{Failures: 2},
	})
	for i := range 120 {
		_, _, _ = generate(r, t.Context(), fmt.Sprintf("typo-%d", i))
	}
	if _, _, err := generate(r, t.Context(), "a-valid-model"); err != nil {
		t.Fatalf("a valid model after 120 typos: %v", err)
	}
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want router.Target
		err  bool
	}{
		{in: "openai/gpt-4.1", want: router.Target{Provider: "openai", Model: "gpt-4.1"}},
		{in: " anthropic / claude-sonnet-4 ", want: router.Target{Provider: "anthropic", Model: "claude-sonnet-4"}},
		{in: "openrouter/meta-llama/llama-3", want: router.Target{Provider: "openrouter", Model: "meta-llama/llama-3"}},
		{in: "gpt-4.1", err: true},
		{in: "/gpt-4.1", err: true},
		{in: "openai/", err: true},
		{in: "", err: true},
	} {
		got, err := router.ParseTarget(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	m := llmtest.New()
	providers := map[string]router.Model{"openai": m}
	for _, tc := range []struct {
		name      string
		providers map[string]router.Model
		cfg       router.Config
		want      string
	}{
		{"unknown provider", providers, router.Config{Routes: map[string][]router.Target{
			"default": chain("openai/m"), "smart": chain("openai/m", "anthropic/claude")}},
			`route "smart": target "anthropic/claude" names provider "anthropic"`},
		{"empty chain", providers, router.Config{Routes: map[string][]router.Target{"default": nil}}, `route "default" has no targets`},
		{"no default", providers, router.Config{Routes: map[string][]router.Target{"smart": chain("openai/m")}}, `no route for the default alias "default"`},
		{"other default", providers, router.Config{Default: "fast", Routes: map[string][]router.Target{"default": chain("openai/m")}}, `no route for the default alias "fast"`},
		{"no model", providers, router.Config{Routes: map[string][]router.Target{"default": {{Provider: "openai"}}}}, `names no model`},
		{"nil provider", map[string]router.Model{"openai": nil}, router.Config{Routes: map[string][]router.Target{"default": chain("openai/m")}}, `provider "openai" is nil`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := router.New(tc.providers, tc.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %s", err, tc.want)
			}
		})
	}
	reg := prometheus.NewRegistry()
	cfg := router.Config{Routes: map[string][]router.Target{"default": chain("openai/m")}}
	if _, err := router.New(providers, cfg, reg); err != nil {
		t.Fatal(err)
	}
	if _, err := router.New(providers, cfg, reg); err == nil {
		t.Error("a second router on the same registry: no error")
	}
}

// A provider that accepts the connection and never answers is given up after the idle
// timeout, not the whole request timeout, and the next target answers.
func TestProviderThatNeverAnswersFallsBackAfterTheIdleTimeout(t *testing.T) {
	a := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	b := newUpstream(t, ok("from b"))
	r, _, _ := newRouter(t, map[string]router.Model{
		"a": a.client(openai.Config{IdleTimeout: 50 * time.Millisecond}), "b": b.client(openai.Config{}),
	}, router.Config{Routes: map[string][]router.Target{"default": chain("a/m", "b/m")}})
	reply, _, err := generate(r, t.Context(), "")
	if err != nil || reply.Text != "from b" {
		t.Fatalf("reply %q, %v; want b's after a's silence", reply.Text, err)
	}
}
