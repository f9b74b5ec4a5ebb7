package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

const sessionColumns = `id, tenant, persona_id, subject, title, metadata, last_seq, created_at, updated_at`

// Session returns the tenant's session id, or an error with code agate.ESessionNotFound.
func (s *Store) Session(ctx context.Context, tenant string, id uuid.UUID) (agate.Session, error) {
	var sess agate.Session
	err := s.retryStale(ctx, func() (err error) {
		sess, err = scanSession(s.pool.QueryRow(ctx,
			`SELECT `+sessionColumns+` FROM sessions WHERE id = $1 AND tenant = $2`, id, tenant))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		err = sessionNotFound(id)
	}
	if err != nil {
		return agate.Session{}, storeErr(ctx, "session", err)
	}
	return sess, nil
}

// Sessions lists the tenant's sessions, most recently updated first (ties broken by id), at
// most limit of them, starting after the session after (uuid.Nil: from the start). An after
// that is not one of the tenant's sessions gives an empty list.
func (s *Store) Sessions(ctx context.Context, tenant string, after uuid.UUID, limit int) ([]agate.Session, error) {
	list := []agate.Session{}
	if limit <= 0 {
		return list, nil
	}
	query, args := `SELECT `+sessionColumns+` FROM sessions
		WHERE tenant = $1 ORDER BY updated_at DESC, id DESC LIMIT $2`, []any{tenant, limit}
	if after != uuid.Nil {
		query, args = `SELECT `+sessionColumns+` FROM sessions
			WHERE tenant = $1 AND (updated_at, id) < (SELECT updated_at, id FROM sessions WHERE tenant = $1 AND id = $2)
			ORDER BY updated_at DESC, id DESC LIMIT $3`, []any{tenant, after, limit}
	}
	err := s.retryStale(ctx, func() error {
		list = list[:0]
		rows, err := s.pool.Query(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			sess, err := scanSession(rows)
			if err != nil {
				return err
			}
			list = append(list, sess)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, storeErr(ctx, "sessions", err)
	}
	return list, nil
}

// DeleteSession removes the tenant's session id with its events, its turns and its
// idempotency keys; its outbox records stay, to be sent. It returns an error with code
// agate.ESessionNotFound if the tenant has no such session.
func (s *Store) DeleteSession(ctx context.Context, tenant string, id uuid.UUID) error {
	// The delete waits for writers of the session (its row lock); its events, turns and
	// idempotency keys go with it (ON DELETE CASCADE).
	var del pgx.Batch
	del.Queue(`DELETE FROM sessions WHERE id = $1 AND tenant = $2`, id, tenant)
	err := s.inTx(ctx, &del, func(br pgx.BatchResults, _ *pgx.Batch) error {
		tag, err := br.Exec()
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return sessionNotFound(id)
		}
		return nil
	})
	if err != nil {
		return storeErr(ctx, "delete session", err)
	}
	return nil
}

func sessionNotFound(id uuid.UUID) error {
	return agate.Errorf(agate.ESessionNotFound, "Session %s was not found.", id)
}

func scanSession(row pgx.Row) (agate.Session, error) {
	var (
		sess             agate.Session
		meta             []byte
		created, updated time.Time
	)
	err := row.Scan(&sess.ID, &sess.Tenant, &sess.PersonaID, &sess.Subject, &sess.Title, &meta,
		&sess.LastSeq, &created, &updated)
	if err != nil {
		return agate.Session{}, err
	}
	if err := json.Unmarshal(meta, &sess.Metadata); err != nil {
		return agate.Session{}, fmt.Errorf("session %s metadata: %w", sess.ID, err)
	}
	if sess.Metadata == nil {
		sess.Metadata = map[string]any{}
	}
	sess.CreatedAt, sess.UpdatedAt = created.UTC(), updated.UTC()
	return sess, nil
}
