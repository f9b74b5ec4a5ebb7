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

func TestLiveHoldsTheRunningTurnsTextUntilItEnds(t *testing.T) {
	hub := inmem.NewHub(0)
	s := uuid.New()
	if _, ok := hub.Live(s); ok {
		t.Fatal("Live before any stream")
	}
	hub.Publish(agate.Event{SessionID: s, Seq: 3, Type: agate.TypeStream, Message: "Hel", Offset: 3})
	hub.Publish(agate.Event{SessionID: s, Seq: 3, Type: agate.TypeStream, Message: "Hello", Offset: 5})
	if ev, ok := hub.Live(s); !ok || ev.Message != "Hello" || ev.Offset != 5 {
		t.Fatalf("Live = %+v, %v; want the latest cumulative text", ev, ok)
	}
	hub.Publish(agate.Event{SessionID: s, Seq: 4, Type: agate.TypeFinal, Message: "Hello"})
	if _, ok := hub.Live(s); ok {
		t.Fatal("Live after the terminal event")
	}
	if n := hub.Subscribers(); n != 0 {
		t.Fatalf("hub keeps %d subscribers, want 0", n)
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
