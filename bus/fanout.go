package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/kafka"
	"github.com/google/uuid"
)

// Hub is the local fan-out of a replica (inmem.Hub).
type Hub interface {
	Publish(ev agate.Event)
	Drop(session uuid.UUID)
	Running(session uuid.UUID) (turn string, ok bool)
}

// Turns is what control records act on (turn.Runner).
type Turns interface {
	Cancel(session uuid.UUID) bool
	Forget(session uuid.UUID)
}

// Fanout handles conversation.outbound on every replica (a kafka.Tail): events of other
// replicas go to the local hub, so that clients connected here follow turns run there,
// and control records cancel or forget the session's turns here. Records this replica
// wrote are skipped: its hub had them first.
type Fanout struct {
	hub    Hub
	turns  Turns
	origin string
	log    *slog.Logger
}

// NewFanout returns the handler of conversation.outbound for the replica origin.
func NewFanout(hub Hub, turns Turns, origin string, log *slog.Logger) *Fanout {
	return &Fanout{hub: hub, turns: turns, origin: origin, log: log}
}

// Handle handles one record; a record it cannot decode is returned as poison.
func (f *Fanout) Handle(_ context.Context, r kafka.Record) error {
	if r.Headers[agate.HeaderOrigin] == f.origin && f.origin != "" {
		return nil
	}
	if ctl := r.Headers[HeaderControl]; ctl != "" {
		session, err := uuid.ParseBytes(r.Key)
		if err != nil {
			return kafka.Poison(fmt.Errorf("control record with key %q: %w", r.Key, err))
		}
		switch ctl {
		case ControlCancel:
			// Only the turn the client saw running: a cancel that comes late must not stop
			// the session's next turn.
			if turn, ok := f.hub.Running(session); ok && turn == r.Headers[HeaderTurn] && f.turns.Cancel(session) {
				f.log.Info("turn cancelled from another replica", "session_id", session, "turn", turn)
			}
		case ControlDeleted:
			f.turns.Forget(session)
			f.hub.Drop(session)
		default:
			return kafka.Poison(fmt.Errorf("unknown control %q", ctl))
		}
		return nil
	}
	var ev agate.Event
	if err := json.Unmarshal(r.Value, &ev); err != nil {
		return kafka.Poison(fmt.Errorf("decode event: %w", err))
	}
	if ev.SessionID == uuid.Nil || ev.Type == "" {
		return kafka.Poison(fmt.Errorf("event without session or type"))
	}
	f.hub.Publish(ev)
	return nil
}
