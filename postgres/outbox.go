package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/agate-gw/agate"
	"github.com/jackc/pgx/v5"
)

// outboxLease names the lease of the outbox relay in the leases table.
const outboxLease = "outbox"

// qLease takes the lease when it is free or expired and renews it when the holder has it;
// a row comes back only then. Expiry is the database's clock, so replicas whose clocks
// disagree still agree on who holds it.
const qLease = `INSERT INTO leases AS l (name, holder, expires_at)
	VALUES ($1, $2, now() + make_interval(secs => $3))
	ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
	WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
	RETURNING l.holder`

// outboxHeaders returns the headers of the outbox records of a store with origin, as JSON.
func outboxHeaders(origin string) string {
	if origin == "" {
		return "{}"
	}
	b, _ := json.Marshal(map[string]string{agate.HeaderOrigin: origin}) // a map of strings always encodes
	return string(b)
}

// LeaseOutbox makes holder the outbox relay until ttl from now, unless another holder's
// lease is still live, and reports whether holder holds the lease. Times are the database's
// clock. An empty holder or a ttl that is not positive gives agate.EInvalid.
func (s *Store) LeaseOutbox(ctx context.Context, holder string, ttl time.Duration) (bool, error) {
	if holder == "" || ttl <= 0 {
		return false, fmt.Errorf("postgres lease outbox: %w",
			agate.Errorf(agate.EInvalid, "A lease needs a holder and a positive duration."))
	}
	var got string
	// Taking or renewing the lease twice is the same as once: a retry is safe.
	err := s.retryStale(ctx, func() error {
		return s.pool.QueryRow(ctx, qLease, outboxLease, holder, ttl.Seconds()).Scan(&got)
	})
	if errors.Is(err, pgx.ErrNoRows) { // another holder's lease is live
		return false, nil
	}
	if err != nil {
		return false, storeErr(ctx, "lease outbox", err)
	}
	return got == holder, nil
}

// Unsent returns up to limit outbox records, oldest first. Payload is the JSON Postgres
// keeps (jsonb: the same value, not necessarily the same bytes as written); Headers is
// never nil.
func (s *Store) Unsent(ctx context.Context, limit int) ([]agate.OutboxRecord, error) {
	recs := []agate.OutboxRecord{}
	if limit <= 0 {
		return recs, nil
	}
	err := s.retryStale(ctx, func() error {
		recs = recs[:0]
		rows, err := s.pool.Query(ctx, `SELECT id, topic, key, payload, headers FROM outbox
			ORDER BY id LIMIT $1`, limit)
		if err != nil {
			return err
		}
		var r agate.OutboxRecord
		_, err = pgx.ForEachRow(rows, []any{&r.ID, &r.Topic, &r.Key, &r.Payload, &r.Headers}, func() error {
			if r.Headers == nil {
				r.Headers = map[string]string{}
			}
			recs = append(recs, r)
			r.Payload, r.Headers = nil, nil // scanned afresh for the next row, not shared
			return nil
		})
		return err
	})
	if err != nil {
		return nil, storeErr(ctx, "unsent", err)
	}
	return recs, nil
}

// MarkSent removes the outbox records ids; unknown ids are ignored.
func (s *Store) MarkSent(ctx context.Context, ids ...int64) error {
	if len(ids) == 0 {
		return nil
	}
	// Deleting twice is the same as once: a retry is safe.
	err := s.retryStale(ctx, func() error {
		_, err := s.pool.Exec(ctx, `DELETE FROM outbox WHERE id = ANY($1)`, ids)
		return err
	})
	if err != nil {
		return storeErr(ctx, "mark sent", err)
	}
	return nil
}

// Enqueue writes recs to the outbox in one transaction, whatever Config.Bus says, with
// agate.HeaderOrigin added when the store has an origin and a record does not set it. A
// record without topic or key, whose payload is not JSON, or with text Postgres cannot
// keep (a NUL), gives agate.EInvalid and nothing is written.
func (s *Store) Enqueue(ctx context.Context, recs ...agate.OutboxRecord) error {
	if len(recs) == 0 {
		return nil
	}
	var batch pgx.Batch
	for _, r := range recs {
		headers, err := enqueueHeaders(r, s.origin)
		if err != nil {
			return fmt.Errorf("postgres enqueue: %w", err)
		}
		batch.Queue(qInsertOutbox, r.Topic, r.Key, string(r.Payload), headers)
	}
	// The inserts go with BEGIN and COMMIT follows them: inTx sends that first round trip
	// again only if it reached a dead connection, when nothing was committed.
	err := s.inTx(ctx, &batch, func(br pgx.BatchResults, _ *pgx.Batch) error {
		for range recs {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return storeErr(ctx, "enqueue", err)
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
	if len(h) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(h) // a map of strings always encodes
	return string(b), err
}

// AddDeadLetter stores d, unless a dead letter of the same topic, partition and offset is
// stored already. An empty topic, or text Postgres cannot keep (a NUL in Error or in the
// headers), gives agate.EInvalid.
func (s *Store) AddDeadLetter(ctx context.Context, d agate.DeadLetter) error {
	if d.Topic == "" {
		return fmt.Errorf("postgres add dead letter: %w", agate.Errorf(agate.EInvalid, "A dead letter needs a topic."))
	}
	headers := "{}"
	if len(d.Headers) > 0 {
		b, err := json.Marshal(d.Headers)
		if err != nil {
			return storeErr(ctx, "add dead letter", err)
		}
		headers = string(b)
	}
	// Storing it twice is the same as once: a retry is safe.
	err := s.retryStale(ctx, func() error {
		_, err := s.pool.Exec(ctx, `INSERT INTO dlq (topic, partition, "offset", key, payload, headers, error)
			VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (topic, partition, "offset") DO NOTHING`,
			d.Topic, d.Partition, d.Offset, nonNil(d.Key), nonNil(d.Payload), headers, d.Error)
		return err
	})
	if err != nil {
		return storeErr(ctx, "add dead letter", err)
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
	query, args := `SELECT `+columns+` FROM dlq WHERE id > $1 ORDER BY id LIMIT $2`, []any{after, limit}
	if topic != "" {
		query, args = `SELECT `+columns+` FROM dlq WHERE topic = $1 AND id > $2 ORDER BY id LIMIT $3`,
			[]any{topic, after, limit}
	}
	err := s.retryStale(ctx, func() error {
		list = list[:0]
		rows, err := s.pool.Query(ctx, query, args...)
		if err != nil {
			return err
		}
		var d agate.DeadLetter
		_, err = pgx.ForEachRow(rows, []any{&d.ID, &d.Topic, &d.Partition, &d.Offset, &d.Key, &d.Payload,
			&d.Headers, &d.Error, &d.CreatedAt}, func() error {
			if d.Headers == nil {
				d.Headers = map[string]string{}
			}
			d.Key, d.Payload, d.CreatedAt = nonNil(d.Key), nonNil(d.Payload), d.CreatedAt.UTC()
			list = append(list, d)
			d.Key, d.Payload, d.Headers = nil, nil, nil // scanned afresh for the next row, not shared
			return nil
		})
		return err
	})
	if err != nil {
		return nil, storeErr(ctx, "dead letters", err)
	}
	return list, nil
}

// nonNil returns b, or an empty slice if b is nil (which pgx would send as NULL).
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
