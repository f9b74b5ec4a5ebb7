package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/agate-gw/agate"
)

// ReserveTokens adds n to the counter's Reserved if Reserved+Spent+n <= limit (limit <= 0:
// no limit), and reports whether it did. The check and the addition are one statement on
// the write connection, which serializes them. A negative n gives agate.EInvalid.
func (s *Store) ReserveTokens(ctx context.Context, key agate.BudgetKey, n, limit int64) (bool, error) {
	if n < 0 {
		return false, fmt.Errorf("sqlite reserve tokens: %w",
			agate.Errorf(agate.EInvalid, "Cannot reserve a negative number of tokens (%d).", n))
	}
	reserved := false
	err := s.inTx(ctx, func(tx wtx) error {
		var total int64
		err := tx.queryRow(ctx, qReserveTokens, key.Tenant, key.Persona, key.Day, n, limit, nanos(s.now())).Scan(&total)
		if errors.Is(err, sql.ErrNoRows) { // no room left
			return nil
		}
		reserved = err == nil
		return err
	})
	if err != nil {
		return false, storeErr("reserve tokens", err)
	}
	return reserved, nil
}

// SettleTokens ends a reservation of reserved tokens that used used: Reserved -= reserved
// (never below 0), Spent += used. Settling a counter that does not exist creates it.
// Negative numbers give agate.EInvalid.
func (s *Store) SettleTokens(ctx context.Context, key agate.BudgetKey, reserved, used int64) error {
	if reserved < 0 || used < 0 {
		return fmt.Errorf("sqlite settle tokens: %w", agate.Errorf(agate.EInvalid,
			"Cannot settle a negative number of tokens (%d reserved, %d used).", reserved, used))
	}
	err := s.inTx(ctx, func(tx wtx) error {
		_, err := tx.exec(ctx, qSettleTokens, key.Tenant, key.Persona, key.Day, reserved, used, nanos(s.now()))
		return err
	})
	if err != nil {
		return storeErr("settle tokens", err)
	}
	return nil
}

// TokenUsage returns the counter, zero if it was never used.
func (s *Store) TokenUsage(ctx context.Context, key agate.BudgetKey) (agate.TokenUsage, error) {
	var u agate.TokenUsage
	err := s.read.QueryRowContext(ctx, `SELECT reserved, spent FROM usage_ledger
		WHERE tenant = ? AND persona = ? AND day = ?`, key.Tenant, key.Persona, key.Day).Scan(&u.Reserved, &u.Spent)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return agate.TokenUsage{}, storeErr("token usage", err)
	}
	return u, nil
}
