package turn_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/llm/llmtest"
	"github.com/agate-gw/agate/sqlite"
	"github.com/agate-gw/agate/turn"
	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
)

// rig is a runner on a real SQLite store with a scripted model, running until the test
// ends or stop is called.
type rig struct {
	store  *sqlite.Store
	hub    *inmem.Hub
	runner *turn.Runner
	model  turn.Model
	stop   func() // stops Run and waits for it to return; may be called more than once
}

func newRig(t *testing.T, model turn.Model, cfg turn.Config) *rig {
	t.Helper()
	return newRigWith(t, model, cfg, nil)
}

// newRigWith is newRig with the runner's store and publisher replaced by what wrap returns
// for the rig's own.
func newRigWith(t *testing.T, model turn.Model, cfg turn.Config, wrap func(turn.Store, turn.Publisher) (turn.Store, turn.Publisher)) *rig {
	t.Helper()
	store, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "agate.db"), sqlite.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	hub := inmem.NewHub(0)
	var st turn.Store = store
	var pub turn.Publisher = hub
	if wrap != nil {
		st, pub = wrap(store, hub)
	}
	r := &rig{store: store, hub: hub, model: model,
		runner: turn.New(st, model, pub, slog.New(slog.NewTextHandler(io.Discard, nil)), cfg)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.runner.Run(ctx) }()
	r.stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after its context was cancelled")
		}
	})
	t.Cleanup(r.stop)
	return r
}

// send accepts a message and returns the subscription that will see its turn.
func (r *rig) send(t *testing.T, session uuid.UUID, msg string) (agate.Accepted, *inmem.Subscription) {
	t.Helper()
	if session == uuid.Nil {
		session = uuid.New()
	}
	sub := r.hub.Subscribe(session)
	t.Cleanup(sub.Close)
	acc, err := r.runner.Send(t.Context(), agate.Inbound{Tenant: "t1", Subject: "u1", SessionID: session, Message: msg})
	if err != nil {
		t.Fatal(err)
	}
	return acc, sub
}

// untilTerminal collects events up to the turn's terminal one.
func untilTerminal(t *testing.T, sub *inmem.Subscription) []agate.Event {
	t.Helper()
	var out []agate.Event
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-sub.Events():
			if !ok {
				t.Fatal("subscription closed before the terminal event")
			}
			out = append(out, ev)
			if agate.Terminal(ev.Type) {
				return out
			}
		case <-timeout:
			t.Fatalf("no terminal event; got %d events", len(out))
		}
	}
}

func TestTurnEndsWithExactlyOneTerminalEvent(t *testing.T) {
	tests := []struct {
		name       string
		reply      llmtest.Reply
		status     string
		code       agate.Code
		message    string
		stored     bool // the reply is part of the conversation afterwards
		turnConfig turn.Config
	}{
		{name: "success", reply: llmtest.Text("Hel", "lo"), status: "ok", message: "Hello", stored: true},
		{name: "provider error before any text", reply: llmtest.Fail(agate.Errorf(agate.EUpstreamAuth, "The provider refused the API key.")),
			status: "error", code: agate.EUpstreamAuth, message: "The provider refused the API key."},
		{name: "stream cut off midway", reply: llmtest.Text("partial ").Fail(agate.Errorf(agate.EStreamTruncated, "The provider's stream ended early.")),
			status: "error", code: agate.EStreamTruncated, message: "partial "},
		{name: "error without a code", reply: llmtest.Fail(errors.New("boom")), status: "error", code: agate.EInternal},
		{name: "model hangs past the turn timeout", reply: llmtest.Text("slow ").Hang(), status: "error", code: agate.EUpstreamTimeout,
			message: "slow ", turnConfig: turn.Config{TurnTimeout: 50 * time.Millisecond}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, llmtest.New(tc.reply), tc.turnConfig)
			acc, sub := r.send(t, uuid.Nil, "hi")
			evs := untilTerminal(t, sub)
			final := evs[len(evs)-1]
			if final.Type != agate.TypeFinal || final.Metadata["status"] != tc.status {
				t.Fatalf("terminal = %s %v, want assistant.final status %s", final.Type, final.Metadata, tc.status)
			}
			if tc.code != "" && final.Metadata["code"] != string(tc.code) {
				t.Fatalf("code = %v, want %s", final.Metadata["code"], tc.code)
			}
			if tc.message != "" && final.Message != tc.message {
				t.Fatalf("message = %q, want %q", final.Message, tc.message)
			}
			if final.Metadata["turn_id"] != acc.Turn.ID.String() {
				t.Fatalf("terminal event names turn %v, want %s", final.Metadata["turn_id"], acc.Turn.ID)
			}
			stored, err := r.store.Events(t.Context(), acc.Turn.SessionID, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			terminals := 0
			for _, ev := range stored {
				if agate.Terminal(ev.Type) {
					terminals++
				}
				if ev.Type == agate.TypeStream {
					t.Fatal("a stream delta was stored")
				}
			}
			if terminals != 1 {
				t.Fatalf("%d terminal events stored, want 1", terminals)
			}
			msgs, _ := r.store.Messages(t.Context(), acc.Turn.SessionID, 1<<62, 10)
			if got := len(msgs) == 2; got != tc.stored {
				t.Fatalf("reply in the conversation = %v, want %v", got, tc.stored)
			}
			if pending, _ := r.store.Pending(t.Context()); len(pending) != 0 {
				t.Fatalf("%d turns still pending after their end", len(pending))
			}
		})
	}
}

func TestCancelEndsTheRunningTurnAsCancelled(t *testing.T) {
	model := llmtest.New(llmtest.Text("thinking about it ").Hang(), llmtest.Text("ok"))
	r := newRig(t, model, turn.Config{})
	acc, sub := r.send(t, uuid.Nil, "long task")
	<-model.Blocked(1)
	if !r.runner.Cancel(acc.Turn.SessionID) {
		t.Fatal("Cancel found no running turn")
	}
	evs := untilTerminal(t, sub)
	final := evs[len(evs)-1]
	if final.Metadata["status"] != "cancelled" || final.Metadata["code"] != string(agate.ECancelled) || final.Message != "thinking about it " {
		t.Fatalf("cancelled turn ended with %q %v", final.Message, final.Metadata)
	}
	// The cancel ended that turn only: the session's next turn runs normally.
	_, sub = r.send(t, acc.Turn.SessionID, "again")
	if evs := untilTerminal(t, sub); evs[len(evs)-1].Metadata["status"] != "ok" {
		t.Fatalf("turn after a cancelled one ended %v", evs[len(evs)-1].Metadata)
	}
}

func TestModelPanicEndsTheTurnAndTheRunnerGoesOn(t *testing.T) {
	r := newRig(t, panicky{llmtest.New(llmtest.Text("fine"))}, turn.Config{Workers: 1})
	_, sub := r.send(t, uuid.Nil, "panic please")
	evs := untilTerminal(t, sub)
	if got := evs[len(evs)-1].Metadata["code"]; got != string(agate.EInternal) {
		t.Fatalf("panicking turn ended with code %v", got)
	}
	_, sub = r.send(t, uuid.Nil, "and now?")
	if evs := untilTerminal(t, sub); evs[len(evs)-1].Message != "fine" {
		t.Fatalf("next turn ended %+v", evs[len(evs)-1])
	}
}

// panicky panics when asked to.
type panicky struct{ next turn.Model }

func (p panicky) Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error) {
	if req.Messages[len(req.Messages)-1].Content == "panic please" {
		panic("provider bug")
	}
	return p.next.Generate(ctx, req, emit)
}

func TestTooManyQueuedTurnsAreRefusedBeforeAnythingIsStored(t *testing.T) {
	model := llmtest.New(llmtest.Wait().Text("done"))
	r := newRig(t, model, turn.Config{Workers: 1, MaxQueued: 2})
	s := uuid.New()
	r.send(t, s, "one")
	r.send(t, s, "two")
	_, err := r.runner.Send(t.Context(), agate.Inbound{Tenant: "t1", SessionID: s, Message: "three"})
	if agate.ErrorCode(err) != agate.EOverloaded {
		t.Fatalf("third message: %v, want %s", err, agate.EOverloaded)
	}
	evs, _ := r.store.Events(t.Context(), s, 0, 100)
	for _, ev := range evs {
		if ev.Message == "three" {
			t.Fatal("a refused message was stored")
		}
	}
	model.Release()
	model.Release()
}

func TestStreamEventsCarryCumulativeTextAndOffsets(t *testing.T) {
	r := newRig(t, llmtest.New(llmtest.Text("Hé", "llo", " wörld")), turn.Config{})
	_, sub := r.send(t, uuid.Nil, "hi")
	var got []string
	var base int64
	for _, ev := range untilTerminal(t, sub) {
		switch ev.Type {
		case agate.TypeThinking:
			base = ev.Seq
		case agate.TypeStream:
			if ev.Seq != base || ev.Offset != len(ev.Message) {
				t.Fatalf("stream event seq %d offset %d for %q; want seq %d and the byte length", ev.Seq, ev.Offset, ev.Message, base)
			}
			got = append(got, ev.Message+"|"+ev.Delta)
		}
	}
	want := []string{"Hé|Hé", "Héllo|llo", "Héllo wörld| wörld"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("stream (-want +got):\n%s", diff)
	}
}

func TestDifferentSessionsRunInParallel(t *testing.T) {
	model := llmtest.New(llmtest.Wait().Text("a"))
	r := newRig(t, model, turn.Config{Workers: 2})
	_, subA := r.send(t, uuid.Nil, "a")
	_, subB := r.send(t, uuid.Nil, "b")
	<-model.Blocked(2) // both turns are running at once
	model.Release()
	model.Release()
	untilTerminal(t, subA)
	untilTerminal(t, subB)
}

func TestRecoverRunsEachPendingTurnOnceInOrder(t *testing.T) {
	store, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "agate.db"), sqlite.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	s := uuid.New()
	for _, m := range []string{"first", "second"} { // accepted by a gateway that then died
		if _, err := store.Accept(t.Context(), agate.Inbound{Tenant: "t1", SessionID: s, Message: m}); err != nil {
			t.Fatal(err)
		}
	}
	model := llmtest.New() // echoes
	hub := inmem.NewHub(0)
	sub := hub.Subscribe(s)
	defer sub.Close()
	r := turn.New(store, model, hub, slog.New(slog.NewTextHandler(io.Discard, nil)), turn.Config{})
	for range 2 { // a second Recover, or a Send racing it, must not run a turn twice
		if err := r.Recover(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var replies []string
	for range 2 {
		evs := untilTerminal(t, sub)
		replies = append(replies, evs[len(evs)-1].Message)
	}
	if diff := cmp.Diff([]string{"first", "second"}, replies); diff != "" {
		t.Fatalf("recovered replies (-want +got):\n%s", diff)
	}
	if n := model.Calls(); n != 2 {
		t.Fatalf("model called %d times for 2 pending turns", n)
	}
}

// TestExternalTurnsRunOnlyWhenSubmitted covers a replica whose turns come from the event
// bus: Send only stores, Recover queues nothing, a submitted turn runs and reports its end
// once, and a turn delivered again after it finished is skipped without running.
func TestExternalTurnsRunOnlyWhenSubmitted(t *testing.T) {
	r := newRig(t, llmtest.New(llmtest.Text("one"), llmtest.Text("two")), turn.Config{External: true})
	acc, sub := r.send(t, uuid.Nil, "hi")
	if ev := <-sub.Events(); ev.Type != agate.TypeUserMessage {
		t.Fatalf("first event = %s", ev.Type)
	}
	if err := r.runner.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-sub.Events():
		t.Fatalf("a turn ran before it was submitted: %s", ev.Type)
	case <-time.After(100 * time.Millisecond):
	}

	done := make(chan struct{}, 2)
	r.runner.Submit(acc.Turn, func() { done <- struct{}{} })
	evs := untilTerminal(t, sub)
	if final := evs[len(evs)-1]; final.Message != "one" {
		t.Fatalf("final = %q", final.Message)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("done not called after the turn ended")
	}
	stored, _ := r.store.Events(t.Context(), acc.Turn.SessionID, 0, 100)

	r.runner.Submit(acc.Turn, func() { done <- struct{}{} }) // redelivered
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("done not called for a redelivered turn")
	}
	again, _ := r.store.Events(t.Context(), acc.Turn.SessionID, 0, 100)
	if len(again) != len(stored) {
		t.Fatalf("a redelivered turn ran again: %d events stored, had %d", len(again), len(stored))
	}
}

// TestExternalTurnInterruptedByShutdownIsNotReportedDone checks that a turn cut short by
// shutdown is not reported over, so the bus delivers it again.
func TestExternalTurnInterruptedByShutdownIsNotReportedDone(t *testing.T) {
	store, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "agate.db"), sqlite.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	runner := turn.New(store, llmtest.New(llmtest.Hang()), inmem.NewHub(0), slog.New(slog.DiscardHandler),
		turn.Config{External: true, Grace: 50 * time.Millisecond})
	acc, err := runner.Send(t.Context(), agate.Inbound{Tenant: "t1", Message: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- runner.Run(ctx) }()
	var called bool
	runner.Submit(acc.Turn, func() { called = true })
	time.Sleep(50 * time.Millisecond) // the turn is running
	cancel()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if called {
		t.Error("done called for a turn interrupted by shutdown")
	}
	if finished, err := store.Finished(t.Context(), acc.Turn.ID); err != nil || finished {
		t.Errorf("Finished = %v, %v; want false", finished, err)
	}
}

// calls records done callbacks by name.
type calls chan string

func newCalls() calls { return make(calls, 64) }

// done returns a done callback that records name.
func (c calls) done(name string) func() { return func() { c <- name } }

// wait returns the next n names recorded, sorted.
func (c calls) wait(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	timeout := time.After(10 * time.Second)
	for len(got) < n {
		select {
		case name := <-c:
			got = append(got, name)
		case <-timeout:
			t.Fatalf("done callbacks: got %q, want %d", got, n)
		}
	}
	slices.Sort(got)
	return got
}

// none fails if a callback was recorded and not yet waited for.
func (c calls) none(t *testing.T) {
	t.Helper()
	select {
	case name := <-c:
		t.Fatalf("done %q called", name)
	default:
	}
}

// TestTurnDeliveredAgainWhileQueuedOrRunningIsDoneOnceItEnds: the bus may deliver a turn
// again while it is still queued or running here; it runs once, and every delivery is
// reported done when it ends, not before.
func TestTurnDeliveredAgainWhileQueuedOrRunningIsDoneOnceItEnds(t *testing.T) {
	model := llmtest.New(llmtest.Wait().Text("one"), llmtest.Text("two"))
	r := newRig(t, model, turn.Config{External: true, Workers: 1})
	acc1, _ := r.send(t, uuid.Nil, "one")
	acc2, _ := r.send(t, acc1.Turn.SessionID, "two")
	got := newCalls()
	r.runner.Submit(acc1.Turn, got.done("1"))
	<-model.Blocked(1)
	r.runner.Submit(acc2.Turn, got.done("2"))
	r.runner.Submit(acc1.Turn, got.done("1 again")) // while it runs
	r.runner.Submit(acc2.Turn, got.done("2 again")) // while it is queued
	got.none(t)
	if n := r.runner.Queued(); n != 2 {
		t.Fatalf("Queued = %d after two turns were each delivered twice, want 2", n)
	}

	model.Release()
	if diff := cmp.Diff([]string{"1", "1 again", "2", "2 again"}, got.wait(t, 4)); diff != "" {
		t.Fatalf("done callbacks (-want +got):\n%s", diff)
	}
	r.stop()
	got.none(t)
	if n := model.Calls(); n != 2 {
		t.Fatalf("model called %d times for 2 turns", n)
	}
}

// TestTurnDeliveredAgainIsNotDoneWhenShutdownInterruptsIt: a turn delivered twice and then
// cut short by shutdown is reported done for neither delivery, so the bus delivers it again.
func TestTurnDeliveredAgainIsNotDoneWhenShutdownInterruptsIt(t *testing.T) {
	model := llmtest.New(llmtest.Hang())
	r := newRig(t, model, turn.Config{External: true, Workers: 1, Grace: 50 * time.Millisecond})
	acc1, _ := r.send(t, uuid.Nil, "one")
	acc2, _ := r.send(t, acc1.Turn.SessionID, "two")
	got := newCalls()
	r.runner.Submit(acc1.Turn, got.done("1"))
	<-model.Blocked(1)
	r.runner.Submit(acc2.Turn, got.done("2"))
	r.runner.Submit(acc1.Turn, got.done("1 again")) // while it runs
	r.runner.Submit(acc2.Turn, got.done("2 again")) // while it is queued
	r.stop()
	got.none(t)
	for _, id := range []uuid.UUID{acc1.Turn.ID, acc2.Turn.ID} {
		if finished, err := r.store.Finished(t.Context(), id); err != nil || finished {
			t.Errorf("Finished(%s) = %v, %v; want false", id, finished, err)
		}
	}
}

// TestWithdrawnQueuedTurnDoesNotRun: a turn the bus took back before it started never runs
// here and is not reported done; delivered again later, it runs.
func TestWithdrawnQueuedTurnDoesNotRun(t *testing.T) {
	model := llmtest.New(llmtest.Wait().Text("a"), llmtest.Text("b"))
	r := newRig(t, model, turn.Config{External: true, Workers: 1})
	accA, _ := r.send(t, uuid.Nil, "a")
	accB, subB := r.send(t, uuid.Nil, "b")
	got := newCalls()
	r.runner.Submit(accA.Turn, got.done("a"))
	<-model.Blocked(1) // the only worker is busy: b waits
	r.runner.Submit(accB.Turn, got.done("b"))
	if !r.runner.Withdraw(accB.Turn.ID) {
		t.Fatal("Withdraw of a queued turn = false")
	}
	if r.runner.Withdraw(accB.Turn.ID) {
		t.Error("Withdraw of a turn withdrawn already = true")
	}
	if r.runner.Withdraw(uuid.New()) {
		t.Error("Withdraw of an unknown turn = true")
	}
	if n := r.runner.Queued(); n != 1 {
		t.Errorf("Queued = %d after a withdrawal, want 1", n)
	}

	model.Release()
	if diff := cmp.Diff([]string{"a"}, got.wait(t, 1)); diff != "" {
		t.Fatalf("done callbacks (-want +got):\n%s", diff)
	}
	if n := r.runner.Queued(); n != 0 {
		t.Errorf("Queued = %d once the only turn left ended, want 0", n)
	}
	if finished, err := r.store.Finished(t.Context(), accB.Turn.ID); err != nil || finished {
		t.Fatalf("withdrawn turn: Finished = %v, %v; want false", finished, err)
	}

	r.runner.Submit(accB.Turn, got.done("b again"))
	if evs := untilTerminal(t, subB); evs[len(evs)-1].Message != "b" {
		t.Fatalf("turn delivered again after its withdrawal ended %+v", evs[len(evs)-1])
	}
	if diff := cmp.Diff([]string{"b again"}, got.wait(t, 1)); diff != "" {
		t.Fatalf("done callbacks (-want +got):\n%s", diff)
	}
	r.stop()
	got.none(t)
	if n := model.Calls(); n != 2 {
		t.Fatalf("model called %d times, want 2", n)
	}
}

// TestWithdrawnRunningTurnStopsWithoutAnEnd: a running turn the bus took back stops as on
// shutdown (no terminal event, not done), and its session's next turn runs.
func TestWithdrawnRunningTurnStopsWithoutAnEnd(t *testing.T) {
	model := llmtest.New(llmtest.Text("partial ").Hang(), llmtest.Text("two"), llmtest.Text("one, again"))
	r := newRig(t, model, turn.Config{External: true, Workers: 1})
	acc1, sub := r.send(t, uuid.Nil, "one")
	acc2, _ := r.send(t, acc1.Turn.SessionID, "two")
	got := newCalls()
	r.runner.Submit(acc1.Turn, got.done("1"))
	r.runner.Submit(acc2.Turn, got.done("2"))
	<-model.Blocked(1)
	if !r.runner.Withdraw(acc1.Turn.ID) {
		t.Fatal("Withdraw of a running turn = false")
	}
	if r.runner.Withdraw(acc1.Turn.ID) {
		t.Error("second Withdraw of a running turn = true")
	}

	evs := untilTerminal(t, sub)
	if final := evs[len(evs)-1]; final.Metadata["turn_id"] != acc2.Turn.ID.String() || final.Message != "two" {
		t.Fatalf("first terminal event after the withdrawal: %q %v, want the next turn's", final.Message, final.Metadata)
	}
	if diff := cmp.Diff([]string{"2"}, got.wait(t, 1)); diff != "" {
		t.Fatalf("done callbacks (-want +got):\n%s", diff)
	}
	if finished, err := r.store.Finished(t.Context(), acc1.Turn.ID); err != nil || finished {
		t.Fatalf("withdrawn turn: Finished = %v, %v; want false", finished, err)
	}
	if n := terminalsOf(t, r.store, acc1.Turn); n != 0 {
		t.Fatalf("%d terminal events stored for the withdrawn turn", n)
	}

	r.runner.Submit(acc1.Turn, got.done("1 again")) // the bus delivers it again
	if evs := untilTerminal(t, sub); evs[len(evs)-1].Message != "one, again" {
		t.Fatalf("withdrawn turn delivered again ended %+v", evs[len(evs)-1])
	}
	if diff := cmp.Diff([]string{"1 again"}, got.wait(t, 1)); diff != "" {
		t.Fatalf("done callbacks (-want +got):\n%s", diff)
	}
	r.stop()
	got.none(t)
}

// terminalsOf returns how many terminal events of turn tu are stored.
func terminalsOf(t *testing.T, store *sqlite.Store, tu agate.Turn) int {
	t.Helper()
	evs, err := store.Events(t.Context(), tu.SessionID, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ev := range evs {
		if agate.Terminal(ev.Type) && ev.Metadata["turn_id"] == tu.ID.String() {
			n++
		}
	}
	return n
}

// TestWithdrawStopsRetryingTheTerminalEvent: a turn whose end cannot be stored is retried
// until it is withdrawn; then the session's next turn runs.
func TestWithdrawStopsRetryingTheTerminalEvent(t *testing.T) {
	failing := make(chan struct{}, 1)
	r := newRigWith(t, llmtest.New(llmtest.Text("unstorable"), llmtest.Text("two")), turn.Config{External: true, Workers: 1},
		func(s turn.Store, p turn.Publisher) (turn.Store, turn.Publisher) {
			return brokenEnd{Store: s, message: "unstorable", failing: failing}, p
		})
	acc1, sub := r.send(t, uuid.Nil, "one")
	acc2, _ := r.send(t, acc1.Turn.SessionID, "two")
	got := newCalls()
	r.runner.Submit(acc1.Turn, got.done("1"))
	r.runner.Submit(acc2.Turn, got.done("2"))
	select {
	case <-failing:
	case <-time.After(10 * time.Second):
		t.Fatal("the terminal event was never stored")
	}
	if !r.runner.Withdraw(acc1.Turn.ID) {
		t.Fatal("Withdraw of a turn retrying its end = false")
	}
	evs := untilTerminal(t, sub)
	if final := evs[len(evs)-1]; final.Metadata["turn_id"] != acc2.Turn.ID.String() {
		t.Fatalf("first terminal event after the withdrawal: %q %v, want the next turn's", final.Message, final.Metadata)
	}
	if diff := cmp.Diff([]string{"2"}, got.wait(t, 1)); diff != "" {
		t.Fatalf("done callbacks (-want +got):\n%s", diff)
	}
	r.stop()
	got.none(t)
	if finished, err := r.store.Finished(t.Context(), acc1.Turn.ID); err != nil || finished {
		t.Fatalf("withdrawn turn: Finished = %v, %v; want false", finished, err)
	}
}

// brokenEnd is a store that cannot store a terminal event with the given message; failing
// gets a token each time it refuses one.
type brokenEnd struct {
	turn.Store
	message string
	failing chan struct{}
}

func (s brokenEnd) Append(ctx context.Context, done *agate.Turn, events ...agate.Event) ([]agate.Event, error) {
	if done != nil && events[len(events)-1].Message == s.message {
		select {
		case s.failing <- struct{}{}:
		default:
		}
		return nil, agate.Errorf(agate.EUnavailable, "the database is down")
	}
	return s.Store.Append(ctx, done, events...)
}

// TestDoneMayCallBackIntoTheRunner: a done callback may use the runner, both when its turn
// ends and when Forget drops it.
func TestDoneMayCallBackIntoTheRunner(t *testing.T) {
	model := llmtest.New(llmtest.Wait().Text("one"), llmtest.Text("two"))
	r := newRig(t, model, turn.Config{External: true, Workers: 1, Grace: 50 * time.Millisecond})
	acc1, _ := r.send(t, uuid.Nil, "one")
	acc2, _ := r.send(t, uuid.Nil, "two")
	acc3, _ := r.send(t, uuid.Nil, "three")
	got := newCalls()
	r.runner.Submit(acc1.Turn, func() {
		got <- fmt.Sprintf("1, queued %d", r.runner.Queued())
		r.runner.Submit(acc2.Turn, got.done("2"))
	})
	<-model.Blocked(1)
	r.runner.Submit(acc3.Turn, func() { got <- fmt.Sprintf("3, queued %d", r.runner.Queued()) })
	forgotten := make(chan struct{})
	go func() {
		r.runner.Forget(acc3.Turn.SessionID)
		close(forgotten)
	}()
	select {
	case <-forgotten:
	case <-time.After(10 * time.Second):
		t.Fatal("Forget is stuck in a done callback that calls the runner")
	}
	if diff := cmp.Diff([]string{"3, queued 1"}, got.wait(t, 1)); diff != "" {
		t.Fatalf("done callbacks (-want +got):\n%s", diff)
	}

	model.Release()
	if diff := cmp.Diff([]string{"1, queued 0", "2"}, got.wait(t, 2)); diff != "" {
		t.Fatalf("done callbacks (-want +got):\n%s", diff)
	}
}

// TestPanicWhileEndingATurnStillReportsItDone: a turn that panics after its end was
// stored, or while it is being ended, is over: it is reported done (the bus would deliver
// it again forever otherwise) and the runner goes on.
func TestPanicWhileEndingATurnStillReportsItDone(t *testing.T) {
	tests := []struct {
		name    string
		model   turn.Model
		message string
		explode func(agate.Event) bool // the terminal events the publisher panics on
	}{
		{name: "publisher panics on the final event", model: llmtest.New(llmtest.Text("explode"), llmtest.Text("fine")), message: "hi",
			explode: func(ev agate.Event) bool { return ev.Message == "explode" }},
		{name: "model panics and so does publishing the error", model: panicky{llmtest.New(llmtest.Text("fine"))}, message: "panic please",
			explode: func(ev agate.Event) bool { return ev.Metadata["code"] == string(agate.EInternal) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRigWith(t, tc.model, turn.Config{External: true, Workers: 1},
				func(s turn.Store, p turn.Publisher) (turn.Store, turn.Publisher) {
					return s, explosive{Publisher: p, explode: tc.explode}
				})
			acc1, _ := r.send(t, uuid.Nil, tc.message)
			got := newCalls()
			r.runner.Submit(acc1.Turn, got.done("1"))
			if diff := cmp.Diff([]string{"1"}, got.wait(t, 1)); diff != "" {
				t.Fatalf("done callbacks (-want +got):\n%s", diff)
			}
			if finished, err := r.store.Finished(t.Context(), acc1.Turn.ID); err != nil || !finished {
				t.Fatalf("Finished = %v, %v; want true", finished, err)
			}

			acc2, sub := r.send(t, uuid.Nil, "and now?")
			r.runner.Submit(acc2.Turn, got.done("2"))
			if evs := untilTerminal(t, sub); evs[len(evs)-1].Message != "fine" {
				t.Fatalf("next turn ended %+v", evs[len(evs)-1])
			}
			if diff := cmp.Diff([]string{"2"}, got.wait(t, 1)); diff != "" {
				t.Fatalf("done callbacks (-want +got):\n%s", diff)
			}
		})
	}
}

// explosive is a publisher that panics on the terminal events explode picks.
type explosive struct {
	turn.Publisher
	explode func(agate.Event) bool
}

func (p explosive) Publish(ev agate.Event) {
	if agate.Terminal(ev.Type) && p.explode(ev) {
		panic("publisher bug")
	}
	p.Publisher.Publish(ev)
}

// TestAdmissionRefusesOrSettlesEachModelCall covers Config.Admit and SystemPromptFor: a
// refused call ends the turn with the refusal's code without calling the model; an
// admitted one is settled once with the provider's token count, and the tenant's system
// prompt is what the model gets.
func TestAdmissionRefusesOrSettlesEachModelCall(t *testing.T) {
	var (
		mu      sync.Mutex
		settled []int64
		systems []string
		refuse  = true
	)
	model := llmtest.New(llmtest.Text("fine").Usage(agate.Usage{PromptTokens: 7, CompletionTokens: 3, TotalTokens: 10}))
	r := newRig(t, model, turn.Config{
		SystemPrompt:    "default",
		SystemPromptFor: func(tenant string) string { return "prompt of " + tenant },
		Admit: func(_ context.Context, tt agate.Turn, req *agate.ModelRequest) (func(int64), error) {
			mu.Lock()
			defer mu.Unlock()
			systems = append(systems, req.Messages[0].Content)
			if refuse {
				return nil, agate.Errorf(agate.EBudgetExceeded, "Tenant %q has spent its tokens for today.", tt.Tenant)
			}
			return func(n int64) {
				mu.Lock()
				defer mu.Unlock()
				settled = append(settled, n)
			}, nil
		},
	})
	_, sub := r.send(t, uuid.Nil, "hi")
	evs := untilTerminal(t, sub)
	final := evs[len(evs)-1]
	if final.Metadata["code"] != string(agate.EBudgetExceeded) || final.Metadata["status"] != agate.StatusError ||
		!strings.Contains(final.Message, "spent its tokens") {
		t.Fatalf("refused turn ended with %q %v", final.Message, final.Metadata)
	}
	mu.Lock()
	refuse = false
	mu.Unlock()
	_, sub = r.send(t, uuid.Nil, "again")
	evs = untilTerminal(t, sub)
	if final := evs[len(evs)-1]; final.Message != "fine" {
		t.Fatalf("admitted turn ended with %q %v", final.Message, final.Metadata)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(settled, []int64{10}) {
		t.Errorf("settled %v, want [10] (once, the provider's total)", settled)
	}
	if len(systems) != 2 || systems[0] != "prompt of t1" {
		t.Errorf("system prompts %q, want the tenant's", systems)
	}
}

// fakeTools answers calls from a table, after an optional wait, and records them.
type fakeTools struct {
	mu      sync.Mutex
	running int
	most    int // calls at once, at most
	answers map[string]turn.ToolOutcome
	calls   []string
	wait    time.Duration
}

func (f *fakeTools) Offer(context.Context, agate.Turn) []agate.Tool {
	return []agate.Tool{{Name: "lookup"}, {Name: "clock"}}
}

func (f *fakeTools) Plan(context.Context, agate.Turn, agate.ToolCall) turn.ToolPlan {
	return turn.ToolPlan{}
}

func (f *fakeTools) Call(_ context.Context, _ agate.Turn, c agate.ToolCall, _ turn.ToolPlan) turn.ToolOutcome {
	f.mu.Lock()
	f.running++
	f.most = max(f.most, f.running)
	f.calls = append(f.calls, c.Name+" "+c.Arguments)
	f.mu.Unlock()
	time.Sleep(f.wait)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running--
	return f.answers[c.Name]
}

// TestToolCallsRunAndTheirResultsGoBackToTheModel: a model that calls two tools at once,
// then answers: the calls run concurrently, tool.start and tool.result events come in the
// model's order and are stored, the model sees the results in its next request, and the
// final text is its answer.
func TestToolCallsRunAndTheirResultsGoBackToTheModel(t *testing.T) {
	tools := &fakeTools{wait: 50 * time.Millisecond, answers: map[string]turn.ToolOutcome{
		"lookup": {Status: turn.ToolOK, Text: "Lisbon: 21°C"},
		"clock":  {Status: turn.ToolBlocked, Text: "The tool clock may not be used."},
	}}
	model := llmtest.New(
		llmtest.Call("c1", "lookup", `{"city":"Lisbon"}`).Call("c2", "clock", `{}`),
		llmtest.Text("It is ", "21°C."),
	)
	r := newRig(t, model, turn.Config{Tools: tools})
	acc, sub := r.send(t, uuid.Nil, "weather?")
	evs := untilTerminal(t, sub)
	var kinds []string
	for _, ev := range evs {
		if ev.Type == agate.TypeToolStart || ev.Type == agate.TypeToolResult {
			kinds = append(kinds, fmt.Sprintf("%s %v %v", ev.Type, ev.Metadata["tool"], ev.Metadata["status"]))
		}
	}
	want := []string{"tool.start lookup <nil>", "tool.start clock <nil>", "tool.result lookup ok", "tool.result clock blocked"}
	if diff := cmp.Diff(want, kinds); diff != "" {
		t.Errorf("tool events (-want +got):\n%s", diff)
	}
	if final := evs[len(evs)-1]; final.Message != "It is 21°C." || final.Metadata["status"] != agate.StatusOK {
		t.Errorf("final = %q %v", final.Message, final.Metadata)
	}
	if tools.most != 2 {
		t.Errorf("%d calls ran at once, want 2", tools.most)
	}
	reqs := model.Requests()
	if len(reqs) != 2 || len(reqs[0].Tools) != 2 {
		t.Fatalf("%d model requests; first offered %d tools", len(reqs), len(reqs[0].Tools))
	}
	second := reqs[1].Messages
	tail := second[len(second)-3:]
	if tail[0].Role != agate.RoleAssistant || len(tail[0].ToolCalls) != 2 ||
		tail[1].ToolCallID != "c1" || tail[1].Content != "Lisbon: 21°C" ||
		tail[2].ToolCallID != "c2" || tail[2].Content != "The tool clock may not be used." {
		t.Errorf("the model's second request ends with %+v", tail)
	}
	stored := allStored(t, r, acc.Turn.SessionID)
	n := 0
	for _, ev := range stored {
		if ev.Type == agate.TypeToolResult {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d tool results stored, want 2", n)
	}
}

// TestToolRoundsAreBounded: a model that keeps calling tools is asked, after
// MaxToolRounds, to answer without calling them (they stay declared: providers refuse
// tool results without tools).
func TestToolRoundsAreBounded(t *testing.T) {
	tools := &fakeTools{answers: map[string]turn.ToolOutcome{"lookup": {Status: turn.ToolOK, Text: "again"}}}
	model := llmtest.New(llmtest.Call("c", "lookup", `{}`), llmtest.Call("c", "lookup", `{}`), llmtest.Text("done"))
	r := newRig(t, model, turn.Config{Tools: tools, MaxToolRounds: 2})
	_, sub := r.send(t, uuid.Nil, "loop")
	evs := untilTerminal(t, sub)
	if final := evs[len(evs)-1]; final.Message != "done" {
		t.Errorf("final = %q", final.Message)
	}
	reqs := model.Requests()
	if len(reqs) != 3 || reqs[2].ToolChoice != "none" || len(reqs[2].Tools) == 0 {
		t.Errorf("%d requests, the last with tool choice %q and %d tools; want 3, the last forbidding calls but declaring the tools",
			len(reqs), reqs[len(reqs)-1].ToolChoice, len(reqs[len(reqs)-1].Tools))
	}
}

func allStored(t *testing.T, r *rig, session uuid.UUID) []agate.Event {
	t.Helper()
	evs, err := r.store.Events(t.Context(), session, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestCancelDuringToolsStoresNoFalseResults: calls cut short by a cancel are not results.
func TestCancelDuringToolsStoresNoFalseResults(t *testing.T) {
	tools := &fakeTools{wait: 300 * time.Millisecond, answers: map[string]turn.ToolOutcome{"lookup": {Status: turn.ToolOK, Text: "late"}}}
	r := newRig(t, llmtest.New(llmtest.Call("c1", "lookup", `{}`), llmtest.Text("never")), turn.Config{Tools: tools})
	acc, sub := r.send(t, uuid.Nil, "go")
	for ev := range sub.Events() {
		if ev.Type == agate.TypeToolStart {
			break
		}
	}
	r.runner.Cancel(acc.Turn.SessionID)
	evs := untilTerminal(t, sub)
	if final := evs[len(evs)-1]; final.Metadata["status"] != agate.StatusCancelled {
		t.Errorf("final = %v", final.Metadata)
	}
	for _, ev := range allStored(t, r, acc.Turn.SessionID) {
		if ev.Type == agate.TypeToolResult {
			t.Errorf("a tool result was stored after the cancel: %q", ev.Message)
		}
	}
}

// TestToolCallsPerMessageAreBounded: past 16 calls in one model message, the rest are
// answered with an error rather than run.
func TestToolCallsPerMessageAreBounded(t *testing.T) {
	tools := &fakeTools{answers: map[string]turn.ToolOutcome{"lookup": {Status: turn.ToolOK, Text: "ok"}}}
	many := llmtest.Call("c0", "lookup", `{}`)
	for i := 1; i < 17; i++ {
		many = many.Call(fmt.Sprintf("c%d", i), "lookup", `{}`)
	}
	r := newRig(t, llmtest.New(many, llmtest.Text("done")), turn.Config{Tools: tools})
	_, sub := r.send(t, uuid.Nil, "many")
	var statuses []any
	for _, ev := range untilTerminal(t, sub) {
		if ev.Type == agate.TypeToolResult {
			statuses = append(statuses, ev.Metadata["status"])
		}
	}
	if len(statuses) != 17 || statuses[15] != turn.ToolOK || statuses[16] != turn.ToolError || len(tools.calls) != 16 {
		t.Errorf("%d results %v, %d calls run; want 17 results, the 17th an error, 16 run", len(statuses), statuses, len(tools.calls))
	}
}
