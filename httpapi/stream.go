package httpapi

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/inmem"
	"github.com/google/uuid"
)

// cursor is a position in a session's stream: after the persisted event seq and, within
// the running turn that followed it, after offset bytes of streamed text.
type cursor struct {
	seq    int64
	offset int
}

// parseCursor reads "12" (after event 12) or "12.345" (after 345 bytes of the text
// streamed after event 12), as sent in SSE ids. "" is the start of the session.
func parseCursor(s string) (cursor, error) {
	if s == "" {
		return cursor{}, nil
	}
	seqPart, offPart, hasOff := strings.Cut(s, ".")
	seq, err := strconv.ParseInt(seqPart, 10, 64)
	if err != nil || seq < 0 {
		return cursor{}, agate.Errorf(agate.EInvalidCursor, "Event id %q is not a stream position.", truncate(s, 32))
	}
	c := cursor{seq: seq}
	if hasOff {
		off, err := strconv.Atoi(offPart)
		if err != nil || off < 0 {
			return cursor{}, agate.Errorf(agate.EInvalidCursor, "Event id %q is not a stream position.", truncate(s, 32))
		}
		c.offset = off
	}
	return c, nil
}

// eventID is the SSE id of ev: its seq, and for ephemeral events the stream offset too.
// An event the store could not keep (seq 0) has none.
func eventID(ev agate.Event) string {
	if ev.Seq == 0 {
		return ""
	}
	if agate.Ephemeral(ev.Type) {
		return fmt.Sprintf("%d.%d", ev.Seq, ev.Offset)
	}
	return strconv.FormatInt(ev.Seq, 10)
}

// Reasons a stream ends before its client leaves.
var (
	errLagged   = errors.New("subscriber fell behind") // the client reconnects and resumes
	errDraining = errors.New("gateway shutting down")
)

// replayPage is how many stored events are read at a time when catching a client up.
const replayPage = 500

// follow sends the session's events after c to send, in order, without gaps or duplicates:
// first the stored events, then the text streamed so far by a running turn, then live
// events from sub until ctx is done. sub must be a subscription to the session made
// before the client was told it is connected, so that nothing published after that is
// missed; follow may be called again on the same sub to resume from another cursor.
// heartbeat is called on every tick of beat. It returns errLagged if the client cannot
// keep up, errDraining on shutdown, or send's error.
func (s *Server) follow(ctx context.Context, sub *inmem.Subscription, session uuid.UUID, c cursor,
	send func(agate.Event) error, beat <-chan time.Time, heartbeat func() error) error {
	for {
		evs, err := s.store.Events(ctx, session, c.seq, replayPage)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if err := send(ev); err != nil {
				return err
			}
			c = cursor{seq: ev.Seq}
		}
		if len(evs) < replayPage {
			break
		}
	}
	// A turn streaming now: send what the client missed of it as one cumulative frame.
	if live, ok := s.hub.Live(session); ok && live.Seq >= c.seq {
		if live.Seq > c.seq {
			c = cursor{seq: live.Seq}
		}
		if live.Offset > c.offset {
			if err := send(catchUp(live, c.offset)); err != nil {
				return err
			}
			c.offset = live.Offset
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.stop:
			return errDraining
		case <-beat:
			if err := heartbeat(); err != nil {
				return err
			}
		case ev, ok := <-sub.Events():
			if !ok {
				if sub.Lagged() {
					return errLagged
				}
				return nil
			}
			switch {
			case ev.Seq == 0:
				// A terminal event the store could not keep: deliver it as it is.
			case !agate.Ephemeral(ev.Type):
				if ev.Seq <= c.seq {
					continue // already replayed from the store
				}
				c = cursor{seq: ev.Seq}
			case ev.Seq < c.seq:
				continue // belongs to a turn the client has seen end
			case ev.Type == agate.TypeStream:
				if ev.Seq > c.seq {
					c = cursor{seq: ev.Seq}
				}
				if ev.Offset <= c.offset {
					continue // the client has this text already
				}
				ev = catchUp(ev, c.offset)
				c.offset = ev.Offset
			}
			if err := send(ev); err != nil {
				return err
			}
		}
	}
}

// catchUp returns the stream event ev with its delta covering everything after offset.
func catchUp(ev agate.Event, offset int) agate.Event {
	if offset > len(ev.Message) {
		offset = len(ev.Message)
	}
	ev.Delta = ev.Message[offset:]
	return ev
}
