package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/agate-gw/agate"
	"github.com/jackc/pgx/v5"
)

// qReserveTokens creates the counter or adds to it only if the limit ($5 > 0) leaves room
// for $4 more tokens; a row comes back only then. It is one statement: a conflicting row
// is locked and the WHERE is checked against its latest version, so concurrent
// reservations, from any number of processes, queue on the row and never pass the limit.
const qReserveTokens = `INSERT INTO usage_ledger AS u (tenant, persona, day, reserved, spent, updated_at)
	SELECT $1::text, $2::text, $3::text, $4::bigint, 0, now() WHERE $5::bigint <= 0 OR $4::bigint <= $5::bigint
	ON CONFLICT (tenant, persona, day) DO UPDATE
	SET reserved = u.reserved + EXCLUDED.reserved, updated_at = EXCLUDED.updated_at
	WHERE $5::bigint <= 0 OR u.reserved + u.spent + EXCLUDED.reserved <= $5::bigint
	RETURNING u.reserved`

const qSettleTokens = `INSERT INTO usage_ledger AS u (tenant, persona, day, reserved, spent, updated_at)
	VALUES ($1, $2, $3, 0, $5, now())
	ON CONFLICT (tenant, persona, day) DO UPDATE
	SET reserved = greatest(u.reserved - $4, 0), spent = u.spent + EXCLUDED.spent, updated_at = EXCLUDED.updated_at`

// ReserveTokens adds n to the counter's Reserved if Reserved+Spent+n <= limit (limit <= 0:
// no limit), and reports whether it did, atomically (see qReserveTokens). A negative n gives
// agate.EInvalid.
func (s *Store) ReserveTokens(ctx context.Context, key agate.BudgetKey, n, limit int64) (bool, error) {
	if n < 0 {
		return false, fmt.Errorf("postgres reserve tokens: %w",
			agate.Errorf(agate.EInvalid, "Cannot reserve a negative number of tokens (%d).", n))
	}
	var total int64
	// Reserving twice is not the same as once: sent again only if it never reached the server.
	err := s.retryUnsent(ctx, func() error {
		return s.pool.QueryRow(ctx, qReserveTokens, key.Tenant, key.Persona, key.Day, n, limit).Scan(&total)
	})
	if errors.Is(err, pgx.ErrNoRows) { // no room left
		return false, nil
	}
	if err != nil {
		return false, storeErr(ctx, "reserve tokens", err)
	}
	return true, nil
}

// SettleTokens ends a reservation of reserved tokens that used used: Reserved -= reserved
// (never below 0), Spent += used. Settling a counter that does not exist creates it.
// Negative numbers give agate.EInvalid.
func (s *Store) SettleTokens(ctx context.Context, key agate.BudgetKey, reserved, used int64) error {
	if reserved < 0 || used < 0 {
		return fmt.Errorf("postgres settle tokens: %w", agate.Errorf(agate.EInvalid,
			"Cannot settle a negative number of tokens (%d reserved, %d used).", reserved, used))
	}
	// Settling twice is not the same as once: sent again only if it never reached the server.
	err := s.retryUnsent(ctx, func() error {
		_, err := s.pool.Exec(ctx, qSettleTokens, key.Tenant, key.Persona, key.Day, reserved, used)
		return err
	})
	if err != nil {
		return storeErr(ctx, "settle tokens", err)
	}
	return nil
}

// TokenUsage returns the counter, zero if it was never used.
func (s *Store) TokenUsage(ctx context.Context, key agate.BudgetKey) (agate.TokenUsage, error) {
	var u agate.TokenUsage
	err := s.retryStale(ctx, func() error {
		return s.pool.QueryRow(ctx, `SELECT reserved, spent FROM usage_ledger
			WHERE tenant = $1 AND persona = $2 AND day = $3`, key.Tenant, key.Persona, key.Day).Scan(&u.Reserved, &u.Spent)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return agate.TokenUsage{}, nil
	}
	if err != nil {
		return agate.TokenUsage{}, storeErr(ctx, "token usage", err)
	}
	return u, nil
}
