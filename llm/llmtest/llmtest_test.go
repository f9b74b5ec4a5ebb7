package llmtest_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/llmtest"
	"github.com/agate-gw/agate/turn"
	"github.com/google/go-cmp/cmp"
)

var _ turn.Model = (*llmtest.Script)(nil)

func request(model string, msgs ...string) agate.ModelRequest {
	req := agate.ModelRequest{Model: model}
	for i, m := range msgs {
		role := agate.RoleUser
		if i%2 == 1 {
			role = agate.RoleAssistant
		}
		req.Messages = append(req.Messages, agate.Message{Role: role, Content: m})
	}
	return req
}

type result struct {
	Deltas []string
	Reply  agate.Reply
	Err    error
}

func generate(ctx context.Context, m turn.Model, req agate.ModelRequest) result {
	var res result
	res.Reply, res.Err = m.Generate(ctx, req, func(d agate.Delta) error {
		res.Deltas = append(res.Deltas, d.Text)
		return nil
	})
	return res
}

var errBoom = agate.Errorf(agate.EUpstream, "boom")

func TestRepliesPlayInOrder(t *testing.T) {
	usage := agate.Usage{PromptTokens: 3, CompletionTokens: 2, TotalTokens: 5}
	s := llmtest.New(
		llmtest.Text("Hello", ", ", "world"),
		llmtest.Text("Hal", "").Fail(errBoom).Text("never"),
		llmtest.Text("cut").Finish("length").Model("big").Usage(usage),
		llmtest.Echo().Text("!"),
	)
	want := []result{
		{Deltas: []string{"Hello", ", ", "world"}, Reply: agate.Reply{Text: "Hello, world", Model: "m", FinishReason: "stop"}},
		{Deltas: []string{"Hal"}, Reply: agate.Reply{Text: "Hal", Model: "m"}, Err: errBoom},
		{Deltas: []string{"cut"}, Reply: agate.Reply{Text: "cut", Model: "big", FinishReason: "length", Usage: usage}},
		{Deltas: []string{"again", "!"}, Reply: agate.Reply{Text: "again!", Model: "m", FinishReason: "stop"}},
		{Deltas: []string{"and again", "!"}, Reply: agate.Reply{Text: "and again!", Model: "m", FinishReason: "stop"}}, // the last reply repeats
	}
	inputs := []string{"a", "b", "c", "again", "and again"}
	var got []result
	for _, in := range inputs {
		got = append(got, generate(t.Context(), s, request("m", in)))
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b error) bool { return a == b })); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if s.Calls() != 5 {
		t.Errorf("Calls = %d, want 5", s.Calls())
	}
}

func TestEmptyScriptEchoes(t *testing.T) {
	s := llmtest.New()
	got := generate(t.Context(), s, request("", "first", "reply", "last"))
	want := result{Deltas: []string{"last"}, Reply: agate.Reply{Text: "last", Model: llmtest.DefaultModel, FinishReason: "stop"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
}

func TestRequestsAreRecordedAsCopies(t *testing.T) {
	s := llmtest.New(llmtest.Text("ok"))
	temp := 0.5
	req := request("m", "hi")
	req.Temperature, req.MaxTokens = &temp, 10
	generate(t.Context(), s, req)
	req.Messages[0].Content, temp = "changed", 2 // the caller reuses its request

	got := s.Requests()
	half := 0.5
	want := []agate.ModelRequest{{Model: "m", Messages: []agate.Message{{Role: agate.RoleUser, Content: "hi"}}, MaxTokens: 10, Temperature: &half}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
	got[0].Messages[0].Content = "mine"
	if s.Requests()[0].Messages[0].Content != "hi" {
		t.Error("Requests returned the script's own slice")
	}
}

func TestHangEndsWithContext(t *testing.T) {
	s := llmtest.New(llmtest.Text("part").Hang())
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan result)
	go func() { done <- generate(ctx, s, request("m", "hi")) }()
	<-s.Blocked(1)
	cancel()
	got := <-done
	if !errors.Is(got.Err, context.Canceled) || got.Reply.Text != "part" {
		t.Errorf("got %+v, want context.Canceled after %q", got, "part")
	}
}

func TestWaitUntilReleased(t *testing.T) {
	s := llmtest.New(llmtest.Text("a").Wait().Text("b"))
	var mu sync.Mutex
	var deltas []string
	done := make(chan error)
	go func() {
		_, err := s.Generate(t.Context(), request("m", "hi"), func(d agate.Delta) error {
			mu.Lock()
			defer mu.Unlock()
			deltas = append(deltas, d.Text)
			return nil
		})
		done <- err
	}()
	<-s.Blocked(1)
	mu.Lock()
	if diff := cmp.Diff([]string{"a"}, deltas); diff != "" {
		t.Errorf("deltas while paused (-want +got):\n%s", diff)
	}
	mu.Unlock()
	s.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a", "b"}, deltas); diff != "" {
		t.Errorf("deltas (-want +got):\n%s", diff)
	}
}

func TestReleaseBeforeWaitIsKept(t *testing.T) {
	s := llmtest.New(llmtest.Wait().Wait().Text("x"))
	s.Release()
	s.Release()
	if got := generate(t.Context(), s, request("m", "hi")); got.Err != nil || got.Reply.Text != "x" {
		t.Errorf("got %+v", got)
	}
	select {
	case <-s.Blocked(2):
	default:
		t.Error("Blocked(2) not closed after two Wait steps")
	}
}

func TestReleaseLetsOneCallPass(t *testing.T) {
	s := llmtest.New(llmtest.Wait().Text("x"))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan result, 2)
	for range 2 {
		go func() { done <- generate(ctx, s, request("m", "hi")) }()
	}
	<-s.Blocked(2)
	s.Release()
	if got := <-done; got.Err != nil || got.Reply.Text != "x" {
		t.Errorf("released call: %+v", got)
	}
	cancel()
	if got := <-done; !errors.Is(got.Err, context.Canceled) {
		t.Errorf("paused call after cancel: %+v", got)
	}
}

func TestCancelledContext(t *testing.T) {
	t.Run("on entry", func(t *testing.T) {
		s := llmtest.New(llmtest.Text("x"))
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		got := generate(ctx, s, request("m", "hi"))
		if !errors.Is(got.Err, context.Canceled) || len(got.Deltas) != 0 || s.Calls() != 1 {
			t.Errorf("got %+v after %d calls", got, s.Calls())
		}
	})
	t.Run("between deltas", func(t *testing.T) {
		s := llmtest.New(llmtest.Text("a", "b"))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var deltas []string
		_, err := s.Generate(ctx, request("m", "hi"), func(d agate.Delta) error {
			deltas = append(deltas, d.Text)
			cancel()
			return nil
		})
		if !errors.Is(err, context.Canceled) || !cmp.Equal(deltas, []string{"a"}) {
			t.Errorf("err %v, deltas %q", err, deltas)
		}
	})
}

func TestEmitErrorStops(t *testing.T) {
	s := llmtest.New(llmtest.Text("a", "b"))
	errGone := errors.New("gone")
	calls := 0
	got, err := s.Generate(t.Context(), request("m", "hi"), func(agate.Delta) error {
		calls++
		return errGone
	})
	if err != errGone || calls != 1 || got.Text != "" {
		t.Errorf("err %v after %d calls, text %q", err, calls, got.Text)
	}
}

func TestChainingDoesNotAlias(t *testing.T) {
	base := llmtest.Text("a")
	one, two := base.Text("1"), base.Text("2")
	s := llmtest.New(one, two)
	if got := generate(t.Context(), s, request("m", "x")).Reply.Text; got != "a1" {
		t.Errorf("first = %q", got)
	}
	if got := generate(t.Context(), s, request("m", "x")).Reply.Text; got != "a2" {
		t.Errorf("second = %q", got)
	}
}

func TestConcurrentCalls(t *testing.T) {
	s := llmtest.New(llmtest.Echo())
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if got := generate(t.Context(), s, request("m", "hi")); got.Reply.Text != "hi" {
				t.Errorf("got %+v", got)
			}
		})
	}
	wg.Wait()
	if s.Calls() != 20 || len(s.Requests()) != 20 {
		t.Errorf("Calls = %d, Requests = %d", s.Calls(), len(s.Requests()))
	}
}
