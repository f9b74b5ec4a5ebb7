package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
)

// outboxLease names the lease of the outbox relay in the leases table.
const outboxLease = "outbox"

// outboxHeaders returns the headers of the outbox records of a store with origin, as JSON.
func outboxHeaders(origin string) string {
	if origin == "" {
		return "{}"
	}
	b, _ := json.Marshal(map[string]string{agate.HeaderOrigin: origin}) // a map of strings always encodes
	return string(b)
}

// toOutbox writes a record for the event bus, keyed by session.
func (s *Store) toOutbox(ctx context.Context, tx wtx, topic string, session uuid.UUID, payload string, at time.Time) error {
	_, err := tx.exec(ctx, qInsertOutbox, topic, session.String(), payload, s.headers, nanos(at))
	return err
}

// LeaseOutbox makes holder the outbox relay until ttl from now, unless another holder's
// lease is still live, and reports whether holder holds the lease. Times are this machine's
// clock, which every process sharing the file reads. An empty holder or a ttl that is not
// positive gives agate.EInvalid.
func (s *Store) LeaseOutbox(ctx context.Context, holder string, ttl time.Duration) (bool, error) {
	if holder == "" || ttl <= 0 {
		return false, fmt.Errorf("sqlite lease outbox: %w",
			agate.Errorf(agate.EInvalid, "A lease needs a holder and a positive duration."))
	}
	held := false
	err := s.inTx(ctx, func(tx wtx) error {
		now := s.now()
		var got string
		err := tx.queryRow(ctx, qLease, outboxLease, holder, nanos(now.Add(ttl)), nanos(now)).Scan(&got)
		if errors.Is(err, sql.ErrNoRows) { // another holder's lease is live
			return nil
		}
		held = err == nil && got == holder
		return err
	})
	if err != nil {
		return false, storeErr("lease outbox", err)
	}
	return held, nil
}

// Unsent returns up to limit outbox records, oldest first. Headers is never nil.
func (s *Store) Unsent(ctx context.Context, limit int) ([]agate.OutboxRecord, error) {
	recs := []agate.OutboxRecord{}
	if limit <= 0 {
		return recs, nil
	}
	rows, err := s.read.QueryContext(ctx, `SELECT id, topic, key, payload, headers FROM outbox
		ORDER BY id LIMIT ?`, limit)
	if err != nil {
		return nil, storeErr("unsent", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r agate.OutboxRecord
		var payload, headers string
		if err := rows.Scan(&r.ID, &r.Topic, &r.Key, &payload, &headers); err != nil {
			return nil, storeErr("unsent", err)
		}
		r.Payload = []byte(payload)
		if r.Headers, err = decodeHeaders(headers); err != nil {
			return nil, storeErr("unsent", fmt.Errorf("outbox record %d: %w", r.ID, err))
		}
		recs = append(recs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, storeErr("unsent", err)
	}
	return recs, nil
}

// MarkSent removes the outbox records ids; unknown ids are ignored.
func (s *Store) MarkSent(ctx context.Context, ids ...int64) error {
	if len(ids) == 0 {
		return nil
	}
	list, err := json.Marshal(ids)
	if err != nil {
		return storeErr("mark sent", err)
	}
	err = s.inTx(ctx, func(tx wtx) error {
		_, err := tx.exec(ctx, qMarkSent, string(list))
		return err
	})
	if err != nil {
		return storeErr("mark sent", err)
	}
	return nil
}

// Enqueue writes recs to the outbox in one transaction, whatever Config.Bus says, with
// agate.HeaderOrigin added when the store has an origin and a record does not set it. A
// record without topic or key, or whose payload is not JSON, gives agate.EInvalid and
// nothing is written.
func (s *Store) Enqueue(ctx context.Context, recs ...agate.OutboxRecord) error {
	if len(recs) == 0 {
		return nil
	}
	headers := make([]string, len(recs))
	for i, r := range recs {
		h, err := enqueueHeaders(r, s.origin)
		if err != nil {
			return fmt.Errorf("sqlite enqueue: %w", err)
		}
		headers[i] = h
	}
	err := s.inTx(ctx, func(tx wtx) error {
		at := nanos(s.now())
		for i, r := range recs {
			if _, err := tx.exec(ctx, qInsertOutbox, r.Topic, r.Key, string(r.Payload), headers[i], at); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return storeErr("enqueue", err)
	}
	return nil
}

// enqueueHeaders checks r, a record given to Enqueue, and returns its headers as JSON, with
// agate.HeaderOrigin set to origin (when not empty) unless r sets it.
func enqueueHeaders(r agate.OutboxRecord, origin string) (string, error) {
	switch {
	case r.Topic == "" || r.Key == "":
		return "", agate.Errorf(agate.EInvalid, "An outbox record needs a topic and a key.")
	case !json.Valid(r.Payload):
		return "", agate.Errorf(agate.EInvalid, "The payload of an outbox record must be JSON.")
	}
	h := r.Headers
	if _, set := h[agate.HeaderOrigin]; origin != "" && !set {
		h = make(map[string]string, len(r.Headers)+1)
		maps.Copy(h, r.Headers)
		h[agate.HeaderOrigin] = origin
	}
	return encodeHeaders(h)
}

// AddDeadLetter stores d, unless a dead letter of the same topic, partition and offset is
// stored already. An empty topic gives agate.EInvalid.
func (s *Store) AddDeadLetter(ctx context.Context, d agate.DeadLetter) error {
	if d.Topic == "" {
		return fmt.Errorf("sqlite add dead letter: %w", agate.Errorf(agate.EInvalid, "A dead letter needs a topic."))
	}
	headers, err := encodeHeaders(d.Headers)
	if err != nil {
		return storeErr("add dead letter", err)
	}
	err = s.inTx(ctx, func(tx wtx) error {
		_, err := tx.exec(ctx, qAddDeadLetter, d.Topic, d.Partition, d.Offset, nonNil(d.Key), nonNil(d.Payload),
			headers, d.Error, nanos(s.now()))
		return err
	})
	if err != nil {
		return storeErr("add dead letter", err)
	}
	return nil
}

// DeadLetters returns up to limit dead letters of topic ("": of every topic) with ID > after,
// oldest first. Key, Payload and Headers are never nil.
func (s *Store) DeadLetters(ctx context.Context, topic string, after int64, limit int) ([]agate.DeadLetter, error) {
	list := []agate.DeadLetter{}
	if limit <= 0 {
		return list, nil
	}
	const columns = `id, topic, partition, "offset", key, payload, headers, error, created_at`
	var rows *sql.Rows
	var err error
	if topic == "" {
		rows, err = s.read.QueryContext(ctx, `SELECT `+columns+` FROM dlq
			WHERE id > ? ORDER BY id LIMIT ?`, after, limit)
	} else {
		rows, err = s.read.QueryContext(ctx, `SELECT `+columns+` FROM dlq
			WHERE topic = ? AND id > ? ORDER BY id LIMIT ?`, topic, after, limit)
	}
	if err != nil {
		return nil, storeErr("dead letters", err)
	}
	defer rows.Close()
	for rows.Next() {
		var d agate.DeadLetter
		var headers string
		var created int64
		err := rows.Scan(&d.ID, &d.Topic, &d.Partition, &d.Offset, &d.Key, &d.Payload, &headers, &d.Error, &created)
		if err != nil {
			return nil, storeErr("dead letters", err)
		}
		if d.Headers, err = decodeHeaders(headers); err != nil {
			return nil, storeErr("dead letters", fmt.Errorf("dead letter %d: %w", d.ID, err))
		}
		d.Key, d.Payload, d.CreatedAt = nonNil(d.Key), nonNil(d.Payload), fromNanos(created)
		list = append(list, d)
	}
	if err := rows.Err(); err != nil {
		return nil, storeErr("dead letters", err)
	}
	return list, nil
}

func encodeHeaders(h map[string]string) (string, error) {
	if len(h) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(h)
	return string(b), err
}

func decodeHeaders(s string) (map[string]string, error) {
	h := map[string]string{}
	if err := json.Unmarshal([]byte(s), &h); err != nil {
		return nil, fmt.Errorf("headers: %w", err)
	}
	return h, nil
}

// nonNil returns b, or an empty slice if b is nil (which the driver would store as NULL).
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
