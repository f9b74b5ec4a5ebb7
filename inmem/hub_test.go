package inmem_test

import (
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/inmem"
	"github.com/google/uuid"
)

func TestPublishReachesEverySubscriberOfTheSession(t *testing.T) {
	hub := inmem.NewHub(8)
	a, b := uuid.New(), uuid.New()
	subA1, subA2, subB := hub.Subscribe(a), hub.Subscribe(a), hub.Subscribe(b)
	defer subA1.Close()
	defer subA2.Close()
	defer subB.Close()

	hub.Publish(agate.Event{SessionID: a, Seq: 1, Type: agate.TypeStarted})
	for _, s := range []*inmem.Subscription{subA1, subA2} {
		if ev := <-s.Events(); ev.Seq != 1 {
			t.Errorf("subscriber got seq %d, want 1", ev.Seq)
		}
	}
	select {
	case ev := <-subB.Events():
		t.Fatalf("subscriber of another session got %+v", ev)
	default:
	}
}

func TestSlowSubscriberIsDroppedWithoutBlocking(t *testing.T) {
	hub := inmem.NewHub(2)
	s := uuid.New()
	slow, fast := hub.Subscribe(s), hub.Subscribe(s)
	defer fast.Close()
	for i := 1; i <= 3; i++ {
		hub.Publish(agate.Event{SessionID: s, Seq: int64(i), Type: agate.TypeFinal})
		<-fast.Events()
	}
	n := 0
	for range slow.Events() {
		n++
	}
	if n != 2 || !slow.Lagged() {
		t.Fatalf("slow subscriber read %d events, lagged=%v; want 2 then dropped", n, slow.Lagged())
	}
	if fast.Lagged() {
		t.Fatal("a subscriber that kept up was dropped")
	}
}

func TestSubscribersSeeWhatWasStreamingWhenTheyJoined(t *testing.T) {
	hub := inmem.NewHub(0)
	s := uuid.New()
	if running, _, ok := hub.Subscribe(s).Snapshot(); running != 0 || ok {
		t.Fatal("a snapshot before any turn shows one running")
	}
	hub.Publish(agate.Event{SessionID: s, Seq: 2, Type: agate.TypeStarted})
	if running, _, ok := hub.Subscribe(s).Snapshot(); running != 2 || ok {
		t.Fatalf("after started: running %d, stream %v; want 2 and no text yet", running, ok)
	}
	hub.Publish(agate.Event{SessionID: s, Seq: 3, Type: agate.TypeStream, Message: "Hel", Offset: 3})
	hub.Publish(agate.Event{SessionID: s, Seq: 3, Type: agate.TypeStream, Message: "Hello", Offset: 5})
	if running, live, ok := hub.Subscribe(s).Snapshot(); running != 2 || !ok || live.Message != "Hello" {
		t.Fatalf("mid-stream snapshot = %d %q %v; want the latest cumulative text", running, live.Message, ok)
	}
	hub.Publish(agate.Event{SessionID: s, Seq: 4, Type: agate.TypeFinal, Message: "Hello"})
	if running, _, ok := hub.Subscribe(s).Snapshot(); running != 0 || ok {
		t.Fatal("a snapshot after the terminal event still shows the turn")
	}
}

func TestDropEndsSubscriptionsAndForgetsTheSession(t *testing.T) {
	hub := inmem.NewHub(0)
	s := uuid.New()
	sub := hub.Subscribe(s)
	hub.Publish(agate.Event{SessionID: s, Seq: 3, Type: agate.TypeStream, Message: "x", Offset: 1})
	hub.Drop(s)
	for range sub.Events() { // what was published before is still read, then the end
	}
	if !sub.Dropped() || sub.Lagged() {
		t.Fatal("subscription not ended as dropped")
	}
	if n := hub.Subscribers(); n != 0 {
		t.Fatalf("%d subscribers left", n)
	}
	if _, _, ok := hub.Subscribe(s).Snapshot(); ok {
		t.Fatal("stream state outlived Drop")
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	hub := inmem.NewHub(0)
	sub := hub.Subscribe(uuid.New())
	sub.Close()
	sub.Close()
	if _, ok := <-sub.Events(); ok {
		t.Fatal("events channel open after Close")
	}
}

// TestTurnStateOnlyMovesForward publishes events the way another replica's arrive through
// the event bus (a stream piece before its turn's start, a start repeated after the end, a
// late piece): what a new subscriber is told is streaming stays right.
func TestTurnStateOnlyMovesForward(t *testing.T) {
	hub := inmem.NewHub(8)
	s := uuid.New()
	piece := func(seq int64, text string) agate.Event {
		return agate.Event{SessionID: s, Seq: seq, Type: agate.TypeStream, Message: text, Offset: len(text)}
	}
	snapshot := func() (int64, string) {
		sub := hub.Subscribe(s)
		defer sub.Close()
		running, live, _ := sub.Snapshot()
		return running, live.Message
	}

	hub.Publish(piece(3, "He")) // overtook its start
	if running, live := snapshot(); running != 0 || live != "" {
		t.Fatalf("before the start: running %d, live %q; want nothing", running, live)
	}
	hub.Publish(agate.Event{SessionID: s, Seq: 2, Type: agate.TypeStarted})
	hub.Publish(piece(3, "Hello"))
	hub.Publish(piece(3, "Hel")) // an older piece, late
	if running, live := snapshot(); running != 2 || live != "Hello" {
		t.Fatalf("while streaming: running %d, live %q; want 2, \"Hello\"", running, live)
	}
	hub.Publish(agate.Event{SessionID: s, Seq: 4, Type: agate.TypeFinal})
	hub.Publish(agate.Event{SessionID: s, Seq: 2, Type: agate.TypeStarted}) // published twice
	hub.Publish(piece(3, "Hello!"))                                         // late
	if running, live := snapshot(); running != 0 || live != "" {
		t.Fatalf("after the end: running %d, live %q; want nothing", running, live)
	}
	if _, ok := hub.Running(s); ok {
		t.Error("Running after the turn ended")
	}
	hub.Publish(agate.Event{SessionID: s, Seq: 6, Type: agate.TypeStarted}) // the next turn
	if running, _ := snapshot(); running != 6 {
		t.Errorf("next turn: running %d, want 6", running)
	}
	if _, ok := hub.Running(s); !ok {
		t.Error("next turn not running")
	}

	// Once the session is dropped (deleted), its events that come late mark nothing.
	hub.Drop(s)
	hub.Publish(agate.Event{SessionID: s, Seq: 7, Type: agate.TypeStarted})
	if _, ok := hub.Running(s); ok {
		t.Error("a deleted session's late start marked a turn running")
	}
	if n := hub.Sessions(); n != 0 {
		t.Errorf("hub keeps %d sessions after the only one was dropped", n)
	}
}
