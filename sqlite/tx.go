package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// The statements of write transactions, prepared once on the write connection at Open:
// preparing costs about as much as running them.
const (
	qIdempotencyKey   = `SELECT request_hash, event_id FROM idempotency_keys WHERE tenant = ? AND key = ?`
	qEventByID        = `SELECT payload FROM session_events WHERE event_id = ?`
	qSessionTenantSeq = `SELECT tenant, last_seq FROM sessions WHERE id = ?`
	qSessionSeq       = `SELECT last_seq FROM sessions WHERE id = ?`
	qInsertSession    = `INSERT INTO sessions (id, tenant, persona_id, subject, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?)`
	qInsertEvent = `INSERT INTO session_events (session_id, seq, event_id, type, role, payload, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`
	qInsertTurn = `INSERT INTO outbox (topic, key, payload, status, dedupe_key, created_at)
		VALUES (?, ?, ?, 'pending', ?, ?)`
	qInsertIdempotencyKey = `INSERT INTO idempotency_keys (tenant, key, request_hash, session_id, event_id, created_at)
		VALUES (?, ?, ?, ?, ?, ?)`
	qFinishTurn        = `UPDATE outbox SET status = 'done' WHERE dedupe_key = ? AND status = 'pending'`
	qAppendedToSession = `UPDATE sessions SET last_seq = ?, updated_at = ? WHERE id = ?`
	// The title is set by the first message that has one.
	qAcceptedIntoSession = `UPDATE sessions SET last_seq = ?, updated_at = ?,
		title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?`
	// Turns are found through the session's user messages, if the session is the tenant's.
	qDeleteTurns = `DELETE FROM outbox WHERE dedupe_key IN
		(SELECT 'turn:' || event_id FROM session_events WHERE session_id = ?1 AND type = ?2
		 AND EXISTS (SELECT 1 FROM sessions WHERE id = ?1 AND tenant = ?3))`
	qDeleteSession = `DELETE FROM sessions WHERE id = ? AND tenant = ?`
)

func prepareWrites(ctx context.Context, db *sql.DB) (map[string]*sql.Stmt, error) {
	stmts := map[string]*sql.Stmt{}
	for _, q := range []string{
		qIdempotencyKey, qEventByID, qSessionTenantSeq, qSessionSeq, qInsertSession, qInsertEvent,
		qInsertTurn, qInsertIdempotencyKey, qFinishTurn, qAppendedToSession, qAcceptedIntoSession,
		qDeleteTurns, qDeleteSession,
	} {
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("prepare %q: %w", q, err)
		}
		stmts[q] = st
	}
	return stmts, nil
}

// wtx is a write transaction (BEGIN IMMEDIATE on the write connection).
type wtx struct {
	tx    *sql.Tx
	stmts map[string]*sql.Stmt // from prepareWrites
}

// inTx runs fn in a write transaction and commits it if fn returns nil.
func (s *Store) inTx(ctx context.Context, fn func(tx wtx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(wtx{tx: tx, stmts: s.stmts}); err != nil {
		return errors.Join(err, ignoreDone(tx.Rollback()))
	}
	return tx.Commit()
}

// ignoreDone drops the error of rolling back a transaction that database/sql already ended
// (it rolls back by itself when the context is cancelled).
func ignoreDone(err error) error {
	if errors.Is(err, sql.ErrTxDone) {
		return nil
	}
	return err
}

// exec runs query, with its prepared statement if it has one.
func (w wtx) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st, ok := w.stmts[query]; ok {
		return w.tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return w.tx.ExecContext(ctx, query, args...)
}

// queryRow runs query, with its prepared statement if it has one.
func (w wtx) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	if st, ok := w.stmts[query]; ok {
		return w.tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return w.tx.QueryRowContext(ctx, query, args...)
}
