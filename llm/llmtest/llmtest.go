// Package llmtest provides Script, a scripted model for tests of the packages that call a
// model (it implements turn.Model). A script plays back replies built from steps — text
// deltas, an error, a pause until the test releases it, a hang until the context is done —
// and records every request it gets:
//
//	model := llmtest.New(
//		llmtest.Text("Hello", ", world"),            // 1st call: two deltas, finish "stop"
//		llmtest.Text("Hal").Fail(errUpstream),       // 2nd call: one delta, then errUpstream
//		llmtest.Text("Wait").Wait().Text(" for it"), // 3rd call: pauses until model.Release()
//		llmtest.Hang(),                              // 4th call and after: blocks until ctx is done
//	)
//	// … start the 3rd call in a goroutine …
//	<-model.Blocked(1) // it has reached its Wait step
//	model.Release()
//
// Nothing in a script depends on wall-clock time.
package llmtest

import (
	"context"
	"slices"
	"sync"

	"github.com/agate-gw/agate"
)

// DefaultModel is the model name of a reply when neither the reply nor the request names one.
const DefaultModel = "llmtest"

type stepKind int

const (
	stepText stepKind = iota
	stepFail
	stepWait
	stepHang
	stepEcho
)

type step struct {
	kind  stepKind
	parts []string
	err   error
}

// Reply is the script of one Generate call: steps run in order, then the call returns
// the text emitted, finish reason "stop" and zero usage unless set otherwise. Build one
// with Text, Fail, Wait, Hang or Echo and chain more steps with the methods of the same
// names. A Reply is a value: chaining never changes the receiver.
type Reply struct {
	calls  []agate.ToolCall
	steps  []step
	usage  agate.Usage
	finish string
	model  string
}

func (r Reply) with(s step) Reply {
	r.steps = append(slices.Clip(r.steps), s)
	return r
}

// Text returns a reply that emits each part as one delta.
func Text(parts ...string) Reply { return Reply{}.Text(parts...) }

// Fail returns a reply that fails with err at once.
func Fail(err error) Reply { return Reply{}.Fail(err) }

// Wait returns a reply that pauses until Script.Release or until ctx is done.
func Wait() Reply { return Reply{}.Wait() }

// Hang returns a reply that blocks until ctx is done and then returns ctx.Err(), as a
// provider that never answers; use it to test cancellation and timeouts.
func Hang() Reply { return Reply{}.Hang() }

// Echo returns a reply that emits the content of the request's last user message as one
// delta (nothing if there is none).
func Echo() Reply { return Reply{}.Echo() }

// Text adds a step that emits each non-empty part as one delta. Before each delta, a done
// ctx ends the call with ctx.Err().
func (r Reply) Text(parts ...string) Reply {
	return r.with(step{kind: stepText, parts: slices.Clone(parts)})
}

// Fail adds a step that ends the call with err (returned as is, with the text so far);
// later steps never run.
func (r Reply) Fail(err error) Reply { return r.with(step{kind: stepFail, err: err}) }

// Wait adds a step that counts as blocked (see Script.Blocked) and pauses until
// Script.Release lets it pass, or until ctx is done, which ends the call with ctx.Err().
func (r Reply) Wait() Reply { return r.with(step{kind: stepWait}) }

// Hang adds a step that counts as blocked (see Script.Blocked) and ends the call with
// ctx.Err() once ctx is done; later steps never run.
func (r Reply) Hang() Reply { return r.with(step{kind: stepHang}) }

// Echo adds a step that emits the content of the request's last user message.
func (r Reply) Echo() Reply { return r.with(step{kind: stepEcho}) }

// Call returns a reply that calls a tool.
func Call(id, name, arguments string) Reply { return Reply{}.Call(id, name, arguments) }

// Call adds a tool call to the reply (several: parallel calls, in this order); the
// reply's finish reason becomes "tool_calls" unless Finish sets another.
func (r Reply) Call(id, name, arguments string) Reply {
	r.calls = append(slices.Clone(r.calls), agate.ToolCall{ID: id, Name: name, Arguments: arguments})
	return r
}

// Usage sets the usage the reply reports.
func (r Reply) Usage(u agate.Usage) Reply {
	r.usage = u
	return r
}

// Finish sets the finish reason the reply reports (default "stop").
func (r Reply) Finish(reason string) Reply {
	r.finish = reason
	return r
}

// Model sets the model name the reply reports (default: the request's model, else
// DefaultModel).
func (r Reply) Model(name string) Reply {
	r.model = name
	return r
}

// Script is a scripted model. The n-th call of Generate plays the n-th reply given to New;
// once they are used up, every further call plays the last one again, and a script made
// with no replies echoes (as Echo) on every call. It is safe for concurrent use; concurrent
// calls take replies in the order they lock the script.
type Script struct {
	mu       sync.Mutex
	replies  []Reply
	requests []agate.ModelRequest
	tokens   int           // Releases not yet used by a Wait step
	released chan struct{} // closed and replaced by Release
	blocked  int           // Wait and Hang steps reached so far
	watchers []watcher
}

type watcher struct {
	n  int
	ch chan struct{}
}

// New returns a script that plays replies in order.
func New(replies ...Reply) *Script {
	return &Script{replies: slices.Clone(replies), released: make(chan struct{})}
}

// Generate records req and plays the next reply, sending its deltas to emit (a nil emit
// discards them). It returns
// the error of a Fail step as is, ctx.Err() when ctx is done (checked on entry, before
// each delta and during Wait and Hang steps), and emit's error if emit fails; in each case
// with the text emitted so far.
func (s *Script) Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error) {
	r := s.take(req)
	if emit == nil {
		emit = func(agate.Delta) error { return nil }
	}
	out := agate.Reply{Model: r.model, FinishReason: r.finish, Usage: r.usage}
	if out.Model == "" {
		out.Model = req.Model
	}
	if out.Model == "" {
		out.Model = DefaultModel
	}
	if out.FinishReason == "" && len(r.calls) > 0 {
		out.FinishReason = agate.FinishToolCalls
	}
	if out.FinishReason == "" {
		out.FinishReason = "stop"
	}
	fail := func(err error) (agate.Reply, error) {
		out.FinishReason, out.Usage = "", agate.Usage{}
		return out, err
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	send := func(text string) error {
		if text == "" {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := emit(agate.Delta{Text: text}); err != nil {
			return err
		}
		out.Text += text
		return nil
	}
	for _, st := range r.steps {
		switch st.kind {
		case stepText:
			for _, p := range st.parts {
				if err := send(p); err != nil {
					return fail(err)
				}
			}
		case stepEcho:
			if err := send(lastUserMessage(req)); err != nil {
				return fail(err)
			}
		case stepFail:
			return fail(st.err)
		case stepWait:
			if err := s.wait(ctx); err != nil {
				return fail(err)
			}
		case stepHang:
			s.block()
			<-ctx.Done()
			return fail(ctx.Err())
		}
	}
	out.ToolCalls = slices.Clone(r.calls)
	return out, nil
}

// take records req and returns the reply for this call.
func (s *Script) take(req agate.ModelRequest) Reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.requests)
	s.requests = append(s.requests, clone(req))
	switch {
	case len(s.replies) == 0:
		return Echo()
	case n < len(s.replies):
		return s.replies[n]
	default:
		return s.replies[len(s.replies)-1]
	}
}

// block counts a blocked step and wakes the watchers it satisfies.
func (s *Script) block() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blocked++
	kept := s.watchers[:0]
	for _, w := range s.watchers {
		if s.blocked >= w.n {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	s.watchers = kept
}

// wait is a Wait step: it takes one Release, waiting for it if need be.
func (s *Script) wait(ctx context.Context) error {
	s.block()
	for {
		s.mu.Lock()
		if s.tokens > 0 {
			s.tokens--
			s.mu.Unlock()
			return nil
		}
		ch := s.released
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Release lets one Wait step pass: one that is paused now, or else the next to be reached.
// Each call releases exactly one step.
func (s *Script) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens++
	close(s.released)
	s.released = make(chan struct{})
}

// Blocked returns a channel that is closed once n Wait or Hang steps in total have been
// reached by this script's calls (whether or not they have since been released).
func (s *Script) Blocked(n int) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	if s.blocked >= n {
		close(ch)
		return ch
	}
	s.watchers = append(s.watchers, watcher{n: n, ch: ch})
	return ch
}

// Requests returns a copy of every request received, in order.
func (s *Script) Requests() []agate.ModelRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]agate.ModelRequest, len(s.requests))
	for i, r := range s.requests {
		out[i] = clone(r)
	}
	return out
}

// Calls returns how many times Generate has been called.
func (s *Script) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.requests)
}

func clone(r agate.ModelRequest) agate.ModelRequest {
	r.Messages = slices.Clone(r.Messages)
	if r.Temperature != nil {
		t := *r.Temperature
		r.Temperature = &t
	}
	return r
}

func lastUserMessage(req agate.ModelRequest) string {
	for _, m := range slices.Backward(req.Messages) {
		if m.Role == agate.RoleUser {
			return m.Content
		}
	}
	return ""
}
