package httpapi

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/inmem"
	"github.com/google/uuid"
)

// cursor is a client's position in a session's stream: it has every stored event up to
// seq and, of the turn streaming now, the first offset bytes of text. The offset goes back
// to 0 with each terminal event. It is sent as the SSE id of every frame: "12", or "12.345"
// while a turn streams; WebSocket clients keep it themselves from seq and offset.
type cursor struct {
	seq    int64
	offset int
}

func (c cursor) String() string {
	if c.offset == 0 {
		return strconv.FormatInt(c.seq, 10)
	}
	return strconv.FormatInt(c.seq, 10) + "." + strconv.Itoa(c.offset)
}

// parseCursor reads a cursor as String writes it. "" is the start of the session.
func parseCursor(s string) (cursor, error) {
	if s == "" {
		return cursor{}, nil
	}
	bad := agate.Errorf(agate.EInvalidCursor, "Event id %q is not a stream position.", truncate(s, 32))
	seqPart, offPart, hasOff := strings.Cut(s, ".")
	seq, err := strconv.ParseInt(seqPart, 10, 64)
	if err != nil || seq < 0 {
		return cursor{}, bad
	}
	c := cursor{seq: seq}
	if hasOff {
		if c.offset, err = strconv.Atoi(offPart); err != nil || c.offset < 0 {
			return cursor{}, bad
		}
	}
	return c, nil
}

// Reasons a stream ends before its client leaves.
var (
	errLagged   = errors.New("subscriber fell behind") // the client reconnects and resumes
	errDraining = errors.New("gateway shutting down")
	errGone     = errors.New("session deleted")
)

// replayPage is how many stored events are read at a time when catching a client up.
const replayPage = 500

// follower sends one client the events of a session after its cursor, exactly once each.
type follower struct {
	*Server
	session uuid.UUID
	c       cursor
	holdEnd int64 // replay stops before the first terminal after this seq (0: no stop)
	held    bool  // replay stopped there: the end is awaited from the hub
	// The latest turn the client knows of, by metadata.turn_id: only its stream is sent,
	// until its end. Stream events of other replicas' turns can come late or early.
	turn     string
	turnSeq  int64
	turnOver bool
	send     func(ev agate.Event, id string) error
}

// follow sends the session's events after c to send, in order, without gaps or duplicates:
// the stored events, then what a running turn has streamed so far, then live events from
// sub until ctx is done. sub must have been subscribed before the client was told it is
// connected. Each event goes with the client's cursor after it, for SSE ids. heartbeat is
// called on every tick of beat. follow returns errLagged if the client cannot keep up,
// errDraining on shutdown, errGone when the session is deleted, or send's error.
//
// The turn running when sub began streams to the client piece by piece: the replay from
// the store stops before that turn's end, which arrives through sub after its stream. If
// it does not come within holdWait (the hub's view was stale, as it can be for a turn run
// by another replica), the end is sent from the store.
func (s *Server) follow(ctx context.Context, sub *inmem.Subscription, session uuid.UUID, c cursor,
	send func(ev agate.Event, id string) error, beat <-chan time.Time, heartbeat func() error) error {
	running, live, streaming := sub.Snapshot()
	f := &follower{Server: s, session: session, c: c, holdEnd: running, send: send}
	hold := time.NewTimer(holdWait)
	hold.Stop()
	defer hold.Stop()
	if running > 0 && running <= c.seq {
		// The client has the running turn's start: read the stored events from there to
		// its cursor, to know that turn and whether it has ended (the hub can be behind
		// the store when the turn runs on another replica).
		if err := f.skim(ctx, running-1); err != nil {
			return err
		}
	}
	if err := f.replay(ctx, -1); err != nil {
		return err
	}
	if f.held {
		hold.Reset(holdWait)
	}
	if streaming {
		if err := f.piece(ctx, live); err != nil {
			return err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.stopCtx.Done():
			return errDraining
		case <-beat:
			if err := heartbeat(); err != nil {
				return err
			}
		case <-hold.C:
			f.holdEnd, f.held = 0, false
			if err := f.replay(ctx, -1); err != nil {
				return err
			}
		case ev, ok := <-sub.Events():
			if ctx.Err() != nil {
				return nil // the client is gone, though an event was ready too
			}
			if !ok {
				switch {
				case sub.Lagged():
					return errLagged
				case sub.Dropped():
					return errGone
				}
				return nil
			}
			// Stored events are published by more than one goroutine, so one may overtake
			// another: fill any gap from the store first (seq has no gaps).
			if ev.Type == agate.TypeStream {
				if err := f.piece(ctx, ev); err != nil {
					return err
				}
				continue
			}
			if !agate.Ephemeral(ev.Type) && ev.Seq > f.c.seq+1 {
				// Stored events after the held-back end are here: that end must go first.
				f.holdEnd = 0
				if err := f.replay(ctx, ev.Seq-1); err != nil {
					return err
				}
			}
			held := f.holdEnd
			if err := f.deliver(ev); err != nil {
				return err
			}
			if held != 0 && f.holdEnd == 0 {
				// The held-back end has come: send what was stored after it, if anything.
				hold.Stop()
				f.held = false
				if err := f.replay(ctx, -1); err != nil {
					return err
				}
			}
		}
	}
}

// holdWait is how long a follower waits for the end of the turn that was running when it
// began to come from the hub, after its stream, before it sends the end from the store.
// A variable for tests.
var holdWait = 2 * time.Second

// piece sends a stream event of a turn the client knows and is still running. Of a turn
// it does not know (this replica's hub missed its start: it runs on another replica, or
// this one just started), it first reads what the store has from the piece's seq on, to
// learn whether the turn ended.
func (f *follower) piece(ctx context.Context, ev agate.Event) error {
	if f.turn == "" && ev.Seq <= f.c.seq {
		if err := f.skim(ctx, ev.Seq-1); err != nil {
			return err
		}
		if f.turn == "" {
			f.turn, f.turnSeq = turnOf(ev), ev.Seq
		}
	}
	return f.deliver(ev)
}

// skim reads the stored events after seq from up to the cursor, which the client has, so
// that deliver notes the turns that ended among them; it sends nothing.
func (f *follower) skim(ctx context.Context, from int64) error {
	for from < f.c.seq {
		evs, err := f.store.Events(ctx, f.session, from, min(replayPage, int(f.c.seq-from)))
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if err := f.deliver(ev); err != nil { // seq <= the cursor: noted, not sent
				return err
			}
			from = ev.Seq
		}
		if len(evs) == 0 {
			return nil
		}
	}
	return nil
}

// note follows the client's running turn through a stored event, and reports whether ev
// starts a newer turn.
func (f *follower) note(ev agate.Event) bool {
	switch {
	case ev.Type == agate.TypeStarted && ev.Seq > f.turnSeq:
		f.turn, f.turnSeq, f.turnOver = turnOf(ev), ev.Seq, false
		return true
	case agate.Terminal(ev.Type) && (turnOf(ev) == f.turn || f.turn == ""):
		f.turn, f.turnOver = turnOf(ev), true
		f.turnSeq = max(f.turnSeq, ev.Seq)
	}
	return false
}

func turnOf(ev agate.Event) string {
	id, _ := ev.Metadata["turn_id"].(string)
	return id
}

// replay sends the stored events after the cursor, up to seq upTo (-1: all of them), but
// not past a held-back end.
func (f *follower) replay(ctx context.Context, upTo int64) error {
	for upTo < 0 || f.c.seq < upTo {
		evs, err := f.store.Events(ctx, f.session, f.c.seq, replayPage)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if upTo >= 0 && ev.Seq > upTo {
				return nil
			}
			if f.holdEnd != 0 && ev.Seq > f.holdEnd && agate.Terminal(ev.Type) {
				f.held = true
				return nil // it comes through the subscription, after the turn's stream
			}
			if err := f.deliver(ev); err != nil {
				return err
			}
		}
		if len(evs) < replayPage {
			return nil
		}
	}
	return nil
}

// deliver sends ev unless the client has it, and moves the cursor. A stream event is sent
// with its delta covering everything after the client's offset.
func (f *follower) deliver(ev agate.Event) error {
	switch {
	case ev.Type == agate.TypeStream:
		// Its Seq is the seq of its turn's last stored event before streaming began.
		if f.turn == "" || turnOf(ev) != f.turn || f.turnOver || ev.Seq > f.c.seq || ev.Offset <= f.c.offset {
			return nil // not the client's running turn, or text it has
		}
		ev.Delta = ev.Message[min(f.c.offset, len(ev.Message)):]
		f.c.offset = ev.Offset
	case ev.Seq == 0:
		// Not stored (its session was deleted): pass it on as it is.
		if agate.Terminal(ev.Type) {
			f.c.offset = 0
		}
	case ev.Seq <= f.c.seq:
		f.note(ev)
		if agate.Terminal(ev.Type) && ev.Seq > f.holdEnd {
			f.holdEnd = 0
		}
		return nil // sent already
	default:
		f.c.seq = ev.Seq
		if f.note(ev) {
			f.c.offset = 0 // offsets count into the running turn's text
		}
		if agate.Terminal(ev.Type) {
			f.c.offset = 0
			if ev.Seq > f.holdEnd {
				f.holdEnd = 0
			}
		}
	}
	return f.send(ev, f.c.String())
}
