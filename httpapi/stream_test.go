package httpapi

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/sqlite"
	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
)

// streamRig is a follower's world: a real store, a hub, and a server reading both.
type streamRig struct {
	store   *sqlite.Store
	hub     *inmem.Hub
	s       *Server
	session uuid.UUID
	turn    agate.Turn
}

func newStreamRig(t *testing.T) *streamRig {
	store, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "a.db"), sqlite.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	acc, err := store.Accept(t.Context(), agate.Inbound{Tenant: "t", Message: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	hub := inmem.NewHub(0)
	return &streamRig{store: store, hub: hub, session: acc.Turn.SessionID, turn: acc.Turn,
		s: &Server{store: store, hub: hub, log: slog.New(slog.NewTextHandler(io.Discard, nil)), stopCtx: context.Background()}}
}

func (r *streamRig) append(t *testing.T, typ string, done *agate.Turn) agate.Event {
	evs, err := r.store.Append(t.Context(), done, agate.Event{SessionID: r.session, Role: "assistant", Type: typ, Message: typ,
		Metadata: map[string]any{"turn_id": r.turn.ID.String()}})
	if err != nil {
		t.Fatal(err)
	}
	return evs[0]
}

// collect follows from c until n frames arrived, calling then (if not nil) after each;
// it returns the frames as "id type delta".
func (r *streamRig) collect(t *testing.T, sub *inmem.Subscription, c cursor, n int, then func(i int)) []string {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var ids []string
	err := r.s.follow(ctx, sub, r.session, c, func(ev agate.Event, id string) error {
		ids = append(ids, id+" "+ev.Type+" "+ev.Delta)
		if len(ids) == n {
			cancel()
		}
		if then != nil {
			then(len(ids))
		}
		return nil
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) < n {
		t.Fatalf("got %d frames, want %d: %q", len(ids), n, ids)
	}
	return ids
}

func TestFollowFillsAGapWhenPublishesOvertakeEachOther(t *testing.T) {
	r := newStreamRig(t)
	sub := r.hub.Subscribe(r.session)
	defer sub.Close()
	r.append(t, agate.TypeStarted, nil)            // 2, published late
	final := r.append(t, agate.TypeFinal, &r.turn) // 3, published late
	later := r.append(t, agate.TypeThinking, nil)  // 4, published first
	r.hub.Publish(later)
	r.hub.Publish(final)
	got := r.collect(t, sub, cursor{seq: 1}, 3, nil)
	want := []string{"2 assistant.started ", "3 assistant.final ", "4 assistant.thinking "}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("frames (-want +got):\n%s", diff)
	}
}

func TestFollowCatchesUpARunningStreamOnceAndSkipsEndedOnes(t *testing.T) {
	r := newStreamRig(t)
	r.hub.Publish(r.append(t, agate.TypeStarted, nil))
	thinking := r.append(t, agate.TypeThinking, nil) // 3
	stream := func(text string) agate.Event {
		return agate.Event{SessionID: r.session, Type: agate.TypeStream, Seq: thinking.Seq, Message: text, Offset: len(text),
			Metadata: map[string]any{"turn_id": r.turn.ID.String()}}
	}
	r.hub.Publish(stream("Hello"))
	sub := r.hub.Subscribe(r.session)
	defer sub.Close()
	r.hub.Publish(stream("Hello wor")) // after subscribing: in the channel too
	r.hub.Publish(stream("Hello world"))

	// A client that had "Hel" gets the rest of what was streamed when it joined in one
	// frame, then each later piece once.
	got := r.collect(t, sub, cursor{seq: 3, offset: 3}, 3, nil)
	want := []string{"3.5 assistant.stream lo", "3.9 assistant.stream  wor", "3.11 assistant.stream ld"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("frames (-want +got):\n%s", diff)
	}

	// Once the turn's final is stored, its stream is over for a client that has the final,
	// even while the hub has not heard of the end (the turn ran on another replica and its
	// final is still on the way): neither the hub's latest piece nor a straggler is sent.
	r.append(t, agate.TypeFinal, &r.turn) // 4, not published yet
	sub2 := r.hub.Subscribe(r.session)
	defer sub2.Close()
	r.hub.Publish(stream("Hello world!")) // a straggler
	evs, err := r.store.Append(t.Context(), nil, agate.Event{SessionID: r.session, Role: "assistant", Type: agate.TypeStarted,
		Metadata: map[string]any{"turn_id": uuid.NewString()}})
	if err != nil {
		t.Fatal(err)
	}
	r.hub.Publish(evs[0]) // 5: the next turn
	got = r.collect(t, sub2, cursor{seq: 4}, 1, nil)
	want = []string{"5 assistant.started "}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("frames after the end (-want +got):\n%s", diff)
	}
}

// TestFollowPicksUpATurnItsHubMissedTheStartOf covers a replica whose hub never saw the
// running turn start (it runs on another replica, and this one has just started): a piece
// of it streams on from the client's offset, and a late piece of a turn whose end the
// client has is not sent again.
func TestFollowPicksUpATurnItsHubMissedTheStartOf(t *testing.T) {
	r := newStreamRig(t)
	r.append(t, agate.TypeStarted, nil)              // 2, never published here
	thinking := r.append(t, agate.TypeThinking, nil) // 3
	piece := func(text string) agate.Event {
		return agate.Event{SessionID: r.session, Type: agate.TypeStream, Seq: thinking.Seq, Message: text, Offset: len(text),
			Metadata: map[string]any{"turn_id": r.turn.ID.String()}}
	}
	sub := r.hub.Subscribe(r.session)
	defer sub.Close()
	r.hub.Publish(piece("Hello"))
	got := r.collect(t, sub, cursor{seq: 3, offset: 3}, 1, nil)
	if diff := cmp.Diff([]string{"3.5 assistant.stream lo"}, got); diff != "" {
		t.Fatalf("frames (-want +got):\n%s", diff)
	}

	final := r.append(t, agate.TypeFinal, &r.turn) // 4
	sub2 := r.hub.Subscribe(r.session)
	defer sub2.Close()
	r.hub.Publish(piece("Hello world")) // late: the client has the final
	r.hub.Publish(final)                // published twice by the bus
	next := r.append(t, agate.TypeThinking, nil)
	r.hub.Publish(next)
	got = r.collect(t, sub2, cursor{seq: 4}, 1, nil)
	if diff := cmp.Diff([]string{"5 assistant.thinking "}, got); diff != "" {
		t.Fatalf("frames after the end (-want +got):\n%s", diff)
	}
}

// TestFollowSendsAHeldEndFromTheStoreWhenTheHubNeverBringsIt: the hub says a turn runs
// but its end went by before (or never comes: a stale view); the client gets the stored
// end after holdWait rather than waiting for the session's next event.
func TestFollowSendsAHeldEndFromTheStoreWhenTheHubNeverBringsIt(t *testing.T) {
	defer func(d time.Duration) { holdWait = d }(holdWait)
	holdWait = 50 * time.Millisecond
	r := newStreamRig(t)
	r.hub.Publish(r.append(t, agate.TypeStarted, nil)) // 2
	r.append(t, agate.TypeFinal, &r.turn)              // 3, never published
	sub := r.hub.Subscribe(r.session)
	defer sub.Close()
	got := r.collect(t, sub, cursor{seq: 2}, 1, nil)
	if diff := cmp.Diff([]string{"3 assistant.final "}, got); diff != "" {
		t.Fatalf("frames (-want +got):\n%s", diff)
	}
}
