package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Accept stores a user message in one transaction, as turn.Log documents: it creates the
// session when in.SessionID is uuid.Nil or unknown, appends the user.message event, records
// the pending turn, remembers the idempotency key and, with the bus enabled, writes the
// outbox records of the event and the turn. A session of another tenant gives
// agate.ESessionNotFound; a known idempotency key gives the first outcome with Duplicate
// set, or agate.EIdempotencyReuse if in.RequestHash differs. The first user message of a
// session also becomes its title.
func (s *Store) Accept(ctx context.Context, in agate.Inbound) (agate.Accepted, error) {
	if in.Tenant == "" {
		return agate.Accepted{}, fmt.Errorf("sqlite accept: %w", agate.Errorf(agate.EInvalid, "A tenant is required."))
	}
	var acc agate.Accepted
	err := s.inTx(ctx, func(tx wtx) error {
		var err error
		acc, err = s.accept(ctx, tx, in)
		return err
	})
	if err != nil {
		return agate.Accepted{}, storeErr("accept", err)
	}
	return acc, nil
}

func (s *Store) accept(ctx context.Context, tx wtx, in agate.Inbound) (agate.Accepted, error) {
	if in.IdempotencyKey != "" {
		acc, seen, err := acceptedBefore(ctx, tx, in)
		if err != nil || seen {
			return acc, err
		}
	}

	id := in.SessionID
	now := s.now()
	lastSeq, err := lastSeqForAccept(ctx, tx, in, &id, now)
	if err != nil {
		return agate.Accepted{}, err
	}
	meta := make(map[string]any, len(in.Metadata)+1)
	maps.Copy(meta, in.Metadata)
	if len(in.Attachments) > 0 {
		meta["attachments"] = in.Attachments
	}
	ev, payload, err := insertEvent(ctx, tx, agate.Event{
		EventID:   uuid.New(),
		Seq:       lastSeq + 1,
		SessionID: id,
		PersonaID: in.PersonaID,
		Role:      agate.RoleUser,
		Type:      agate.TypeUserMessage,
		Message:   in.Message,
		Metadata:  meta,
		Version:   agate.Version,
		CreatedAt: now,
	})
	if err != nil {
		return agate.Accepted{}, err
	}
	if _, err := tx.exec(ctx, qAcceptedIntoSession, ev.Seq, nanos(now), agate.Title(in.Message), id.String()); err != nil {
		return agate.Accepted{}, err
	}

	t := agate.Turn{ID: ev.EventID, SessionID: id, Tenant: in.Tenant, PersonaID: in.PersonaID, Seq: ev.Seq}
	if _, err := tx.exec(ctx, qInsertTurn, t.ID.String(), id.String(), t.Tenant, t.PersonaID, t.Seq,
		nanos(now)); err != nil {
		return agate.Accepted{}, err
	}
	if s.bus {
		turn, err := json.Marshal(t)
		if err != nil {
			return agate.Accepted{}, err
		}
		if err := s.toOutbox(ctx, tx, agate.TopicOutbound, id, payload, now); err != nil {
			return agate.Accepted{}, err
		}
		if err := s.toOutbox(ctx, tx, agate.TopicInbound, id, string(turn), now); err != nil {
			return agate.Accepted{}, err
		}
	}

	if in.IdempotencyKey != "" {
		if _, err := tx.exec(ctx, qInsertIdempotencyKey, in.Tenant, in.IdempotencyKey, in.RequestHash,
			id.String(), ev.EventID.String(), nanos(now)); err != nil {
			return agate.Accepted{}, err
		}
	}
	return agate.Accepted{Turn: t, Event: ev}, nil
}

// acceptedBefore returns the first outcome of in's idempotency key, if the tenant used it
// before.
func acceptedBefore(ctx context.Context, tx wtx, in agate.Inbound) (acc agate.Accepted, seen bool, err error) {
	var hash, eventID string
	err = tx.queryRow(ctx, qIdempotencyKey, in.Tenant, in.IdempotencyKey).Scan(&hash, &eventID)
	if errors.Is(err, sql.ErrNoRows) {
		return agate.Accepted{}, false, nil
	}
	if err != nil {
		return agate.Accepted{}, false, err
	}
	if hash != in.RequestHash {
		return agate.Accepted{}, true, agate.Errorf(agate.EIdempotencyReuse,
			"The idempotency key was already used for a different request.")
	}
	var payload string
	if err := tx.queryRow(ctx, qEventByID, eventID).Scan(&payload); err != nil {
		return agate.Accepted{}, false, fmt.Errorf("event %s of idempotency key: %w", eventID, err)
	}
	ev, err := decodeEvent(payload)
	if err != nil {
		return agate.Accepted{}, false, err
	}
	t := agate.Turn{ID: ev.EventID, SessionID: ev.SessionID, Tenant: in.Tenant, PersonaID: ev.PersonaID, Seq: ev.Seq}
	return agate.Accepted{Turn: t, Event: ev, Duplicate: true}, true, nil
}

// lastSeqForAccept returns the last seq of the session *id for in.Tenant, creating the
// session at now (with a new random id if *id is uuid.Nil) when it does not exist.
func lastSeqForAccept(ctx context.Context, tx wtx, in agate.Inbound, id *uuid.UUID, now time.Time) (int64, error) {
	if *id != uuid.Nil {
		var tenant string
		var lastSeq int64
		err := tx.queryRow(ctx, qSessionTenantSeq, id.String()).Scan(&tenant, &lastSeq)
		switch {
		case err == nil && tenant != in.Tenant:
			return 0, sessionNotFound(*id)
		case err == nil:
			return lastSeq, nil
		case !errors.Is(err, sql.ErrNoRows):
			return 0, err
		}
	} else {
		*id = uuid.New()
	}
	_, err := tx.exec(ctx, qInsertSession, id.String(), in.Tenant, in.PersonaID, in.Subject, nanos(now), nanos(now))
	return 0, err
}

// Append stores events at the end of their sessions' logs in one transaction, as turn.Log
// documents, and returns them as stored: Seq, CreatedAt and Version set, EventID set if it
// was nil, Metadata never nil, Offset zero. If done is not nil and one of the events is
// terminal, done is marked finished. With the bus enabled every stored event also goes to
// the outbox. Nothing is stored if any event is refused: an ephemeral or empty type or a
// metadata value JSON cannot encode (agate.EInvalid), an unknown session
// (agate.ESessionNotFound), an event id stored already (agate.EInvalid).
func (s *Store) Append(ctx context.Context, done *agate.Turn, events ...agate.Event) ([]agate.Event, error) {
	for _, ev := range events {
		if ev.Type == "" {
			return nil, fmt.Errorf("sqlite append: %w", agate.Errorf(agate.EInvalid, "An event type is required."))
		}
		if agate.Ephemeral(ev.Type) {
			return nil, fmt.Errorf("sqlite append: %w",
				agate.Errorf(agate.EInvalid, "Events of type %q are streamed, not stored.", ev.Type))
		}
	}
	stored := make([]agate.Event, 0, len(events))
	if len(events) == 0 {
		return stored, nil
	}
	err := s.inTx(ctx, func(tx wtx) error {
		stored = stored[:0]
		lastSeq := map[uuid.UUID]int64{}
		var updated time.Time
		finished := false
		for _, ev := range events {
			seq, ok := lastSeq[ev.SessionID]
			if !ok {
				err := tx.queryRow(ctx, qSessionSeq, ev.SessionID.String()).Scan(&seq)
				if errors.Is(err, sql.ErrNoRows) {
					return sessionNotFound(ev.SessionID)
				}
				if err != nil {
					return err
				}
			}
			ev.Seq = seq + 1
			lastSeq[ev.SessionID] = ev.Seq
			ev.CreatedAt = s.now()
			updated = ev.CreatedAt
			ev.Offset = 0
			if ev.EventID == uuid.Nil {
				ev.EventID = uuid.New()
			}
			if ev.Version == "" {
				ev.Version = agate.Version
			}
			if ev.Metadata == nil {
				ev.Metadata = map[string]any{}
			}
			saved, payload, err := insertEvent(ctx, tx, ev)
			if err != nil {
				return err
			}
			if s.bus {
				if err := s.toOutbox(ctx, tx, agate.TopicOutbound, ev.SessionID, payload, ev.CreatedAt); err != nil {
					return err
				}
				if rec, ok := agate.DispatchOf(ev); ok { // a tool call for executors leaves with its start (encoded from the event as given: numbers keep their digits)
					headers, err := enqueueHeaders(rec, s.origin)
					if err != nil {
						return err
					}
					if _, err := tx.exec(ctx, qInsertOutbox, rec.Topic, rec.Key, string(rec.Payload), headers, nanos(ev.CreatedAt)); err != nil {
						return err
					}
				}
			}
			stored = append(stored, saved)
			finished = finished || (done != nil && agate.Terminal(ev.Type))
		}
		for id, seq := range lastSeq {
			if _, err := tx.exec(ctx, qAppendedToSession, seq, nanos(updated), id.String()); err != nil {
				return err
			}
		}
		if finished {
			if _, err := tx.exec(ctx, qFinishTurn, done.ID.String()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, storeErr("append", err)
	}
	return stored, nil
}

// insertEvent stores ev and returns it as it reads back (metadata decoded from JSON), so
// that a writer sees exactly what readers will, and its stored payload.
func insertEvent(ctx context.Context, tx wtx, ev agate.Event) (agate.Event, string, error) {
	b, err := json.Marshal(ev)
	if err != nil {
		return agate.Event{}, "", agate.Wrap(agate.EInvalid, err, "The event metadata cannot be encoded as JSON.")
	}
	payload := string(b)
	_, err = tx.exec(ctx, qInsertEvent, ev.SessionID.String(), ev.Seq, ev.EventID.String(), ev.Type, ev.Role,
		payload, nanos(ev.CreatedAt))
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE {
		return agate.Event{}, "", agate.Errorf(agate.EInvalid, "Event %s is stored already.", ev.EventID)
	}
	if err != nil {
		return agate.Event{}, "", err
	}
	saved, err := decodeEvent(payload)
	return saved, payload, err
}

// Events returns up to limit events of the session with Seq > after, in order. An unknown
// session has no events.
func (s *Store) Events(ctx context.Context, sessionID uuid.UUID, after int64, limit int) ([]agate.Event, error) {
	evs, err := s.queryEvents(ctx, limit, `SELECT payload FROM session_events
		WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?`, sessionID.String(), after)
	if err != nil {
		return nil, storeErr("events", err)
	}
	return evs, nil
}

// Messages returns up to limit of the session's latest user.message events and
// assistant.final events whose metadata.status is "ok", with Seq <= upTo, oldest first.
func (s *Store) Messages(ctx context.Context, sessionID uuid.UUID, upTo int64, limit int) ([]agate.Event, error) {
	evs, err := s.queryEvents(ctx, limit, `SELECT payload FROM session_events
		WHERE session_id = ? AND seq <= ?
		  AND (type = ? OR (type = ? AND json_extract(payload, '$.metadata.status') = ?))
		ORDER BY seq DESC LIMIT ?`,
		sessionID.String(), upTo, agate.TypeUserMessage, agate.TypeFinal, agate.StatusOK)
	if err != nil {
		return nil, storeErr("messages", err)
	}
	slices.Reverse(evs)
	return evs, nil
}

// queryEvents runs a query selecting event payloads, whose last parameter is limit.
func (s *Store) queryEvents(ctx context.Context, limit int, query string, args ...any) ([]agate.Event, error) {
	evs := []agate.Event{}
	if limit <= 0 {
		return evs, nil
	}
	rows, err := s.read.QueryContext(ctx, query, append(args, limit)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var payload string
		if err := rows.Scan(&payload); err != nil {
			return nil, err
		}
		ev, err := decodeEvent(payload)
		if err != nil {
			return nil, err
		}
		evs = append(evs, ev)
	}
	return evs, rows.Err()
}

// Pending returns the turns that are not finished, in acceptance order.
func (s *Store) Pending(ctx context.Context) ([]agate.Turn, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT id, session_id, tenant, persona_id, seq FROM turns
		WHERE status = 'pending' ORDER BY created_at, seq, id`)
	if err != nil {
		return nil, storeErr("pending", err)
	}
	defer rows.Close()
	turns := []agate.Turn{}
	for rows.Next() {
		var t agate.Turn
		var id, session string
		if err := rows.Scan(&id, &session, &t.Tenant, &t.PersonaID, &t.Seq); err != nil {
			return nil, storeErr("pending", err)
		}
		if t.ID, err = uuid.Parse(id); err != nil {
			return nil, storeErr("pending", fmt.Errorf("turn id %q: %w", id, err))
		}
		if t.SessionID, err = uuid.Parse(session); err != nil {
			return nil, storeErr("pending", fmt.Errorf("turn %s session id %q: %w", id, session, err))
		}
		turns = append(turns, t)
	}
	if err := rows.Err(); err != nil {
		return nil, storeErr("pending", err)
	}
	return turns, nil
}

// Finished reports whether the turn id is finished: its terminal event is stored, or there
// is no such turn (any more).
func (s *Store) Finished(ctx context.Context, id uuid.UUID) (bool, error) {
	var status string
	err := s.read.QueryRowContext(ctx, `SELECT status FROM turns WHERE id = ?`, id.String()).Scan(&status)
	if errors.Is(err, sql.ErrNoRows) {
		return true, nil
	}
	if err != nil {
		return false, storeErr("finished", err)
	}
	return status == "done", nil
}

func decodeEvent(payload string) (agate.Event, error) {
	var ev agate.Event
	if err := json.Unmarshal([]byte(payload), &ev); err != nil {
		return agate.Event{}, fmt.Errorf("event payload: %w", err)
	}
	if ev.Metadata == nil {
		ev.Metadata = map[string]any{}
	}
	return ev, nil
}
