package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// acceptAttempts bounds how often Accept starts over after losing an idempotency-key race:
// once is the rule; more only if the winner's session is deleted at once.
const acceptAttempts = 3

// The statements of the write paths. pgx prepares and caches each on every connection.
const (
	qAcceptedBefore = `SELECT k.request_hash, e.payload FROM idempotency_keys k
		JOIN session_events e ON e.event_id = k.event_id WHERE k.tenant = $1 AND k.key = $2`
	// A session created by two Accepts at once is inserted by one; the other waits for it
	// and then locks it in qLockForAccept.
	qCreateSession = `INSERT INTO sessions (id, tenant, persona_id, subject, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING`
	// Taking the row lock and the next seq in one statement: concurrent writers to the
	// session wait here until the holder commits. updated_at never moves back, even when
	// another process's clock is behind; the title is set by the first message that has one.
	qLockForAccept = `UPDATE sessions SET last_seq = last_seq + 1, updated_at = GREATEST(updated_at, $3),
		title = CASE WHEN title = '' THEN $4 ELSE title END
		WHERE id = $1 AND tenant = $2 RETURNING last_seq, updated_at`
	qLockForAppend = `UPDATE sessions SET last_seq = last_seq + $2, updated_at = GREATEST(updated_at, $3)
		WHERE id = $1 RETURNING last_seq, updated_at`
	qInsertEvent = `INSERT INTO session_events (session_id, seq, event_id, type, role, payload, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`
	qInsertTurn = `INSERT INTO turns (id, session_id, tenant, persona_id, seq, status, created_at)
		VALUES ($1, $2, $3, $4, $5, 'pending', $6)`
	qInsertOutbox = `INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, $2, $3, $4)`
	// Without ON CONFLICT: a key taken by a concurrent Accept must fail the statement, so that
	// the COMMIT queued after it is skipped.
	qInsertIdempotencyKey = `INSERT INTO idempotency_keys (tenant, key, request_hash, session_id, event_id, created_at)
		VALUES ($1, $2, $3, $4, $5, $6)`
	qFinishTurn = `UPDATE turns SET status = 'done' WHERE id = $1 AND status = 'pending'`
)

// The names Postgres gives to session_events' UNIQUE (event_id) and to the primary key of
// idempotency_keys.
const (
	eventIDConstraint        = "session_events_event_id_key"
	idempotencyKeyConstraint = "idempotency_keys_pkey"
)

// Accept stores a user message in one transaction, as turn.Log documents: it creates the
// session when in.SessionID is uuid.Nil or unknown, appends the user.message event, records
// the pending turn, remembers the idempotency key and, with the bus enabled, writes the
// outbox records of the event and the turn. A session of another tenant gives
// agate.ESessionNotFound; a known idempotency key gives the first outcome with Duplicate
// set, or agate.EIdempotencyReuse if in.RequestHash differs, also when the first request
// was being stored by a concurrent Accept. The first user message of a session also
// becomes its title.
func (s *Store) Accept(ctx context.Context, in agate.Inbound) (agate.Accepted, error) {
	if in.Tenant == "" {
		return agate.Accepted{}, fmt.Errorf("postgres accept: %w", agate.Errorf(agate.EInvalid, "A tenant is required."))
	}
	var err error
	for range acceptAttempts {
		if in.IdempotencyKey != "" {
			acc, seen, err := s.acceptedBefore(ctx, in)
			if err != nil {
				return agate.Accepted{}, storeErr(ctx, "accept", err)
			}
			if seen {
				return acc, nil
			}
		}
		var acc agate.Accepted
		acc, err = s.accept(ctx, in)
		if isUnique(err, idempotencyKeyConstraint) {
			// A concurrent Accept with the same key committed first (the insert waited for
			// it); this one is rolled back, and the first outcome is there to read.
			continue
		}
		if err != nil {
			return agate.Accepted{}, storeErr(ctx, "accept", err)
		}
		return acc, nil
	}
	return agate.Accepted{}, storeErr(ctx, "accept", err)
}

func (s *Store) accept(ctx context.Context, in agate.Inbound) (agate.Accepted, error) {
	id := in.SessionID
	if id == uuid.Nil {
		id = uuid.New()
	}
	now := s.now()
	var lock pgx.Batch
	lock.Queue(qCreateSession, id, in.Tenant, in.PersonaID, in.Subject, now)
	lock.Queue(qLockForAccept, id, in.Tenant, now, agate.Title(in.Message))

	var acc agate.Accepted
	err := s.inTx(ctx, &lock, func(br pgx.BatchResults, next *pgx.Batch) error {
		var seq int64
		var at time.Time
		if _, err := br.Exec(); err != nil {
			return err
		}
		err := br.QueryRow().Scan(&seq, &at)
		if errors.Is(err, pgx.ErrNoRows) {
			return sessionNotFound(id) // it exists in another tenant
		}
		if err != nil {
			return err
		}

		meta := make(map[string]any, len(in.Metadata)+1)
		maps.Copy(meta, in.Metadata)
		if len(in.Attachments) > 0 {
			meta["attachments"] = in.Attachments
		}
		ev := agate.Event{
			EventID:   uuid.New(),
			Seq:       seq,
			SessionID: id,
			PersonaID: in.PersonaID,
			Role:      agate.RoleUser,
			Type:      agate.TypeUserMessage,
			Message:   in.Message,
			Metadata:  meta,
			Version:   agate.Version,
			CreatedAt: at.UTC(),
		}
		payload, err := encodeEvent(ev)
		if err != nil {
			return err
		}
		t := agate.Turn{ID: ev.EventID, SessionID: id, Tenant: in.Tenant, PersonaID: in.PersonaID, Seq: ev.Seq}
		next.Queue(qInsertEvent, id, ev.Seq, ev.EventID, ev.Type, ev.Role, payload, ev.CreatedAt)
		next.Queue(qInsertTurn, t.ID, id, t.Tenant, t.PersonaID, t.Seq, ev.CreatedAt)
		if s.bus {
			turn, err := json.Marshal(t)
			if err != nil {
				return err
			}
			next.Queue(qInsertOutbox, agate.TopicOutbound, id.String(), payload, s.headers)
			next.Queue(qInsertOutbox, agate.TopicInbound, id.String(), turn, s.headers)
		}
		if in.IdempotencyKey != "" {
			next.Queue(qInsertIdempotencyKey, in.Tenant, in.IdempotencyKey, in.RequestHash, id, ev.EventID, ev.CreatedAt)
		}
		stored, err := decodeEvent(payload)
		acc = agate.Accepted{Turn: t, Event: stored}
		return err
	})
	if err != nil {
		return agate.Accepted{}, err
	}
	return acc, nil
}

// acceptedBefore returns the first outcome of in's idempotency key, if the tenant used it
// before and that Accept committed.
func (s *Store) acceptedBefore(ctx context.Context, in agate.Inbound) (acc agate.Accepted, seen bool, err error) {
	var hash string
	var payload []byte
	err = s.retryStale(ctx, func() error {
		return s.pool.QueryRow(ctx, qAcceptedBefore, in.Tenant, in.IdempotencyKey).Scan(&hash, &payload)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return agate.Accepted{}, false, nil
	}
	if err != nil {
		return agate.Accepted{}, false, err
	}
	if hash != in.RequestHash {
		return agate.Accepted{}, true, agate.Errorf(agate.EIdempotencyReuse,
			"The idempotency key was already used for a different request.")
	}
	ev, err := decodeEvent(payload)
	if err != nil {
		return agate.Accepted{}, false, err
	}
	t := agate.Turn{ID: ev.EventID, SessionID: ev.SessionID, Tenant: in.Tenant, PersonaID: ev.PersonaID, Seq: ev.Seq}
	return agate.Accepted{Turn: t, Event: ev, Duplicate: true}, true, nil
}

// Append stores events at the end of their sessions' logs in one transaction, as turn.Log
// documents, and returns them as stored: Seq, CreatedAt and Version set, EventID set if it
// was nil, Metadata never nil, Offset zero. The events of one call share their session's
// new updated_at as CreatedAt. If done is not nil and one of the events is terminal,
// done is marked finished. With the bus enabled every stored event also goes to the outbox.
// Nothing is stored if any event is refused: an ephemeral or empty type, a metadata value
// JSON cannot encode or text Postgres cannot keep (agate.EInvalid), an unknown session
// (agate.ESessionNotFound), an event id stored already (agate.EInvalid).
func (s *Store) Append(ctx context.Context, done *agate.Turn, events ...agate.Event) ([]agate.Event, error) {
	for _, ev := range events {
		if ev.Type == "" {
			return nil, fmt.Errorf("postgres append: %w", agate.Errorf(agate.EInvalid, "An event type is required."))
		}
		if agate.Ephemeral(ev.Type) {
			return nil, fmt.Errorf("postgres append: %w",
				agate.Errorf(agate.EInvalid, "Events of type %q are streamed, not stored.", ev.Type))
		}
	}
	stored := make([]agate.Event, 0, len(events))
	if len(events) == 0 {
		return stored, nil
	}
	count := map[uuid.UUID]int64{}
	for _, ev := range events {
		count[ev.SessionID]++
	}
	// Sessions are locked in id order, so that two batches over the same sessions cannot
	// deadlock.
	ids := slices.SortedFunc(maps.Keys(count), func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) })
	now := s.now()
	var lock pgx.Batch
	for _, id := range ids {
		lock.Queue(qLockForAppend, id, count[id], now)
	}

	err := s.inTx(ctx, &lock, func(br pgx.BatchResults, next *pgx.Batch) error {
		stored = stored[:0]
		seq := make(map[uuid.UUID]int64, len(ids)) // seq of the session's next event
		at := make(map[uuid.UUID]time.Time, len(ids))
		for _, id := range ids {
			var last int64
			var t time.Time
			err := br.QueryRow().Scan(&last, &t)
			if errors.Is(err, pgx.ErrNoRows) {
				return sessionNotFound(id)
			}
			if err != nil {
				return err
			}
			seq[id], at[id] = last-count[id]+1, t.UTC()
		}

		finished := false
		for _, ev := range events {
			ev.Seq = seq[ev.SessionID]
			seq[ev.SessionID]++
			ev.CreatedAt = at[ev.SessionID]
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
			payload, err := encodeEvent(ev)
			if err != nil {
				return err
			}
			next.Queue(qInsertEvent, ev.SessionID, ev.Seq, ev.EventID, ev.Type, ev.Role, payload, ev.CreatedAt)
			saved, err := decodeEvent(payload)
			if err != nil {
				return err
			}
			if s.bus {
				next.Queue(qInsertOutbox, agate.TopicOutbound, ev.SessionID.String(), payload, s.headers)
				if rec, ok := agate.DispatchOf(ev); ok { // a tool call for executors leaves with its start (encoded from the event as given: numbers keep their digits)
					headers, err := enqueueHeaders(rec, s.origin)
					if err != nil {
						return err
					}
					next.Queue(qInsertOutbox, rec.Topic, rec.Key, rec.Payload, headers)
				}
			}
			stored = append(stored, saved)
			finished = finished || (done != nil && agate.Terminal(ev.Type))
		}
		if finished {
			next.Queue(qFinishTurn, done.ID)
		}
		return nil
	})
	if isUnique(err, eventIDConstraint) {
		err = agate.Wrap(agate.EInvalid, err, "An event of the batch is stored already.")
	}
	if err != nil {
		return nil, storeErr(ctx, "append", err)
	}
	return stored, nil
}

// Events returns up to limit events of the session with Seq > after, in order. An unknown
// session has no events.
func (s *Store) Events(ctx context.Context, sessionID uuid.UUID, after int64, limit int) ([]agate.Event, error) {
	evs, err := s.queryEvents(ctx, limit, `SELECT payload FROM session_events
		WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`, sessionID, after)
	if err != nil {
		return nil, storeErr(ctx, "events", err)
	}
	return evs, nil
}

// Messages returns up to limit of the session's latest user.message events and
// assistant.final events whose metadata.status is "ok", with Seq <= upTo, oldest first.
func (s *Store) Messages(ctx context.Context, sessionID uuid.UUID, upTo int64, limit int) ([]agate.Event, error) {
	evs, err := s.queryEvents(ctx, limit, `SELECT payload FROM session_events
		WHERE session_id = $1 AND seq <= $2
		  AND (type = $3 OR (type = $4 AND payload->'metadata'->>'status' = $5))
		ORDER BY seq DESC LIMIT $6`,
		sessionID, upTo, agate.TypeUserMessage, agate.TypeFinal, agate.StatusOK)
	if err != nil {
		return nil, storeErr(ctx, "messages", err)
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
	err := s.retryStale(ctx, func() error {
		evs = evs[:0]
		rows, err := s.pool.Query(ctx, query, append(args, limit)...)
		if err != nil {
			return err
		}
		var payload []byte
		_, err = pgx.ForEachRow(rows, []any{&payload}, func() error {
			ev, err := decodeEvent(payload)
			if err != nil {
				return err
			}
			evs = append(evs, ev)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return evs, nil
}

// Pending returns the turns that are not finished, in acceptance order.
func (s *Store) Pending(ctx context.Context) ([]agate.Turn, error) {
	turns := []agate.Turn{}
	err := s.retryStale(ctx, func() error {
		turns = turns[:0]
		rows, err := s.pool.Query(ctx, `SELECT id, session_id, tenant, persona_id, seq FROM turns
			WHERE status = 'pending' ORDER BY created_at, seq, id`)
		if err != nil {
			return err
		}
		var t agate.Turn
		_, err = pgx.ForEachRow(rows, []any{&t.ID, &t.SessionID, &t.Tenant, &t.PersonaID, &t.Seq}, func() error {
			turns = append(turns, t)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, storeErr(ctx, "pending", err)
	}
	return turns, nil
}

// Finished reports whether the turn id is finished: its terminal event is stored, or there
// is no such turn (any more).
func (s *Store) Finished(ctx context.Context, id uuid.UUID) (bool, error) {
	var done bool
	err := s.retryStale(ctx, func() error {
		return s.pool.QueryRow(ctx, `SELECT status = 'done' FROM turns WHERE id = $1`, id).Scan(&done)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return true, nil
	}
	if err != nil {
		return false, storeErr(ctx, "finished", err)
	}
	return done, nil
}

// encodeEvent returns ev's payload: the sa01-v1 envelope as JSON.
func encodeEvent(ev agate.Event) ([]byte, error) {
	payload, err := json.Marshal(ev)
	if err != nil {
		return nil, agate.Wrap(agate.EInvalid, err, "The event metadata cannot be encoded as JSON.")
	}
	return payload, nil
}

// decodeEvent reads a payload back, so that a writer returns exactly what readers will see.
func decodeEvent(payload []byte) (agate.Event, error) {
	var ev agate.Event
	if err := json.Unmarshal(payload, &ev); err != nil {
		return agate.Event{}, fmt.Errorf("event payload: %w", err)
	}
	if ev.Metadata == nil {
		ev.Metadata = map[string]any{}
	}
	return ev, nil
}
