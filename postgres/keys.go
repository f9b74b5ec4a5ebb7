package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/agate-gw/agate"
	"github.com/jackc/pgx/v5"
)

const apiKeyColumns = `id, tenant, label, scopes, hash, created_by, created_at, last_used_at, revoked_at`

// CreateAPIKey stores k; a zero CreatedAt is now. Times are kept to the microsecond. An id
// that exists gives agate.EInvalid, and so does a key without an id, a tenant or a hash.
func (s *Store) CreateAPIKey(ctx context.Context, k agate.APIKey) error {
	if k.ID == "" || k.Tenant == "" || k.Hash == "" {
		return fmt.Errorf("postgres create api key: %w",
			agate.Errorf(agate.EInvalid, "An API key needs an id, a tenant and a hash."))
	}
	scopes, err := json.Marshal(nonNilScopes(k.Scopes))
	if err != nil {
		return storeErr(ctx, "create api key", err)
	}
	created := k.CreatedAt
	if created.IsZero() {
		created = s.now()
	}
	// In a transaction of its own, which inTx may send again if the connection was dead:
	// a retry of a plain INSERT that did commit would find its own key and call it taken.
	var insert pgx.Batch
	insert.Queue(`INSERT INTO api_keys (id, tenant, label, scopes, hash, created_by, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING`,
		k.ID, k.Tenant, k.Label, string(scopes), k.Hash, k.CreatedBy, created)
	err = s.inTx(ctx, &insert, func(br pgx.BatchResults, _ *pgx.Batch) error {
		tag, err := br.Exec()
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return agate.Errorf(agate.EInvalid, "API key %s exists already.", k.ID)
		}
		return nil
	})
	if err != nil {
		return storeErr(ctx, "create api key", err)
	}
	return nil
}

// APIKey returns the key with id, revoked or not, or an error with code agate.ENotFound.
func (s *Store) APIKey(ctx context.Context, id string) (agate.APIKey, error) {
	var k agate.APIKey
	err := s.retryStale(ctx, func() (err error) {
		k, err = scanAPIKey(s.pool.QueryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = $1`, id))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		err = apiKeyNotFound(id)
	}
	if err != nil {
		return agate.APIKey{}, storeErr(ctx, "api key", err)
	}
	return k, nil
}

// APIKeys lists the tenant's keys, revoked ones included, newest first (ties broken by id).
func (s *Store) APIKeys(ctx context.Context, tenant string) ([]agate.APIKey, error) {
	list := []agate.APIKey{}
	err := s.retryStale(ctx, func() error {
		list = list[:0]
		rows, err := s.pool.Query(ctx, `SELECT `+apiKeyColumns+` FROM api_keys
			WHERE tenant = $1 ORDER BY created_at DESC, id DESC`, tenant)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			k, err := scanAPIKey(rows)
			if err != nil {
				return err
			}
			list = append(list, k)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, storeErr(ctx, "api keys", err)
	}
	return list, nil
}

// RevokeAPIKey marks the tenant's key id revoked at at (zero: now), unless it was revoked
// before, and returns it. It returns an error with code agate.ENotFound if the tenant has
// no such key.
func (s *Store) RevokeAPIKey(ctx context.Context, tenant, id string, at time.Time) (agate.APIKey, error) {
	if at.IsZero() {
		at = s.now()
	}
	var k agate.APIKey
	// The first revocation's time stays, so revoking twice is the same as once: a retry is safe.
	err := s.retryStale(ctx, func() (err error) {
		k, err = scanAPIKey(s.pool.QueryRow(ctx, `UPDATE api_keys SET revoked_at = coalesce(revoked_at, $3)
			WHERE id = $1 AND tenant = $2 RETURNING `+apiKeyColumns, id, tenant, at))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		err = apiKeyNotFound(id)
	}
	if err != nil {
		return agate.APIKey{}, storeErr(ctx, "revoke api key", err)
	}
	return k, nil
}

// TouchAPIKey sets the key's LastUsedAt to at (zero: now), unless it is later already. An
// unknown id is ignored.
func (s *Store) TouchAPIKey(ctx context.Context, id string, at time.Time) error {
	if at.IsZero() {
		at = s.now()
	}
	// last_used_at only moves forward: a retry is safe.
	err := s.retryStale(ctx, func() error {
		_, err := s.pool.Exec(ctx, `UPDATE api_keys SET last_used_at = $2
			WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)`, id, at)
		return err
	})
	if err != nil {
		return storeErr(ctx, "touch api key", err)
	}
	return nil
}

func apiKeyNotFound(id string) error {
	return agate.Errorf(agate.ENotFound, "API key %s was not found.", id)
}

func scanAPIKey(row pgx.Row) (agate.APIKey, error) {
	var k agate.APIKey
	var scopes []byte
	err := row.Scan(&k.ID, &k.Tenant, &k.Label, &scopes, &k.Hash, &k.CreatedBy, &k.CreatedAt, &k.LastUsedAt, &k.RevokedAt)
	if err != nil {
		return agate.APIKey{}, err
	}
	if err := json.Unmarshal(scopes, &k.Scopes); err != nil {
		return agate.APIKey{}, fmt.Errorf("api key %s scopes: %w", k.ID, err)
	}
	k.Scopes = nonNilScopes(k.Scopes)
	k.CreatedAt = k.CreatedAt.UTC()
	for _, t := range []*time.Time{k.LastUsedAt, k.RevokedAt} {
		if t != nil {
			*t = t.UTC()
		}
	}
	return k, nil
}

// nonNilScopes returns scopes, or an empty slice if it is nil (which would encode as null).
func nonNilScopes(scopes []string) []string {
	if scopes == nil {
		return []string{}
	}
	return scopes
}
