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
	qInsertTurn = `INSERT INTO turns (id, session_id, tenant, persona_id, seq, status, created_at)
		VALUES (?, ?, ?, ?, ?, 'pending', ?)`
	qInsertOutbox         = `INSERT INTO outbox (topic, key, payload, headers, created_at) VALUES (?, ?, ?, ?, ?)`
	qInsertIdempotencyKey = `INSERT INTO idempotency_keys (tenant, key, request_hash, session_id, event_id, created_at)
		VALUES (?, ?, ?, ?, ?, ?)`
	qFinishTurn        = `UPDATE turns SET status = 'done' WHERE id = ? AND status = 'pending'`
	qAppendedToSession = `UPDATE sessions SET last_seq = ?, updated_at = ? WHERE id = ?`
	// The title is set by the first message that has one.
	qAcceptedIntoSession = `UPDATE sessions SET last_seq = ?, updated_at = ?,
		title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?`
	// Its events, turns and idempotency keys go with the session (ON DELETE CASCADE).
	qDeleteSession = `DELETE FROM sessions WHERE id = ? AND tenant = ?`
	// The lease is taken when it is free or expired, renewed when the holder has it; a row
	// comes back only then.
	qLease = `INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
		WHERE leases.holder = excluded.holder OR leases.expires_at < ?4
		RETURNING holder`
	// ids is a JSON array: one statement whatever their number.
	qMarkSent      = `DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))`
	qAddDeadLetter = `INSERT INTO dlq (topic, partition, "offset", key, payload, headers, error, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (topic, partition, "offset") DO NOTHING`
	// A key whose id exists already inserts nothing.
	qInsertAPIKey = `INSERT INTO api_keys (id, tenant, label, scopes, hash, created_by, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`
	// The first revocation's time stays.
	qRevokeAPIKey = `UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?3) WHERE id = ?1 AND tenant = ?2
		RETURNING ` + apiKeyColumns
	qTouchAPIKey = `UPDATE api_keys SET last_used_at = ?2
		WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)`
	// The counter is created or added to only if the limit (?5 > 0) leaves room for ?4 more
	// tokens; a row comes back only then. (The SELECT needs its WHERE: without one SQLite
	// would read ON CONFLICT as a join constraint.)
	qReserveTokens = `INSERT INTO usage_ledger (tenant, persona, day, reserved, spent, updated_at)
		SELECT ?1, ?2, ?3, ?4, 0, ?6 WHERE ?5 <= 0 OR ?4 <= ?5
		ON CONFLICT (tenant, persona, day) DO UPDATE
		SET reserved = usage_ledger.reserved + excluded.reserved, updated_at = excluded.updated_at
		WHERE ?5 <= 0 OR usage_ledger.reserved + usage_ledger.spent + excluded.reserved <= ?5
		RETURNING reserved`
	qSettleTokens = `INSERT INTO usage_ledger (tenant, persona, day, reserved, spent, updated_at)
		VALUES (?1, ?2, ?3, 0, ?5, ?6)
		ON CONFLICT (tenant, persona, day) DO UPDATE
		SET reserved = max(usage_ledger.reserved - ?4, 0), spent = usage_ledger.spent + excluded.spent,
			updated_at = excluded.updated_at`
)

func prepareWrites(ctx context.Context, db *sql.DB) (map[string]*sql.Stmt, error) {
	stmts := map[string]*sql.Stmt{}
	for _, q := range []string{
		qIdempotencyKey, qEventByID, qSessionTenantSeq, qSessionSeq, qInsertSession, qInsertEvent,
		qInsertTurn, qInsertOutbox, qInsertIdempotencyKey, qFinishTurn, qAppendedToSession,
		qAcceptedIntoSession, qDeleteSession, qLease, qMarkSent, qAddDeadLetter,
		qInsertAPIKey, qRevokeAPIKey, qTouchAPIKey, qReserveTokens, qSettleTokens,
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
