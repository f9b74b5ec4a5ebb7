package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
)

const sessionColumns = `id, tenant, persona_id, subject, title, metadata, last_seq, created_at, updated_at`

// Session returns the tenant's session id, or an error with code agate.ESessionNotFound.
func (s *Store) Session(ctx context.Context, tenant string, id uuid.UUID) (agate.Session, error) {
	row := s.read.QueryRowContext(ctx,
		`SELECT `+sessionColumns+` FROM sessions WHERE id = ? AND tenant = ?`, id.String(), tenant)
	sess, err := scanSession(row)
	if errors.Is(err, sql.ErrNoRows) {
		err = sessionNotFound(id)
	}
	if err != nil {
		return agate.Session{}, storeErr("session", err)
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
	var rows *sql.Rows
	var err error
	if after == uuid.Nil {
		rows, err = s.read.QueryContext(ctx, `SELECT `+sessionColumns+` FROM sessions
			WHERE tenant = ?1 ORDER BY updated_at DESC, id DESC LIMIT ?2`, tenant, limit)
	} else {
		rows, err = s.read.QueryContext(ctx, `SELECT `+sessionColumns+` FROM sessions
			WHERE tenant = ?1 AND (updated_at, id) < (SELECT updated_at, id FROM sessions WHERE tenant = ?1 AND id = ?2)
			ORDER BY updated_at DESC, id DESC LIMIT ?3`, tenant, after.String(), limit)
	}
	if err != nil {
		return nil, storeErr("sessions", err)
	}
	defer rows.Close()
	for rows.Next() {
		sess, err := scanSession(rows)
		if err != nil {
			return nil, storeErr("sessions", err)
		}
		list = append(list, sess)
	}
	if err := rows.Err(); err != nil {
		return nil, storeErr("sessions", err)
	}
	return list, nil
}

// DeleteSession removes the tenant's session id with its events, its turns and its
// idempotency keys; its outbox records stay, to be sent. It returns an error with code
// agate.ESessionNotFound if the tenant has no such session.
func (s *Store) DeleteSession(ctx context.Context, tenant string, id uuid.UUID) error {
	err := s.inTx(ctx, func(tx wtx) error {
		res, err := tx.exec(ctx, qDeleteSession, id.String(), tenant)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return sessionNotFound(id)
		}
		return nil
	})
	if err != nil {
		return storeErr("delete session", err)
	}
	return nil
}

func sessionNotFound(id uuid.UUID) error {
	return agate.Errorf(agate.ESessionNotFound, "Session %s was not found.", id)
}

func scanSession(row interface{ Scan(...any) error }) (agate.Session, error) {
	var (
		sess             agate.Session
		id, meta         string
		created, updated int64
	)
	err := row.Scan(&id, &sess.Tenant, &sess.PersonaID, &sess.Subject, &sess.Title, &meta,
		&sess.LastSeq, &created, &updated)
	if err != nil {
		return agate.Session{}, err
	}
	if sess.ID, err = uuid.Parse(id); err != nil {
		return agate.Session{}, fmt.Errorf("session id %q: %w", id, err)
	}
	if err := json.Unmarshal([]byte(meta), &sess.Metadata); err != nil {
		return agate.Session{}, fmt.Errorf("session %s metadata: %w", id, err)
	}
	if sess.Metadata == nil {
		sess.Metadata = map[string]any{}
	}
	sess.CreatedAt, sess.UpdatedAt = fromNanos(created), fromNanos(updated)
	return sess, nil
}
