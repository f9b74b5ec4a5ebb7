package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/agate-gw/agate"
)

const apiKeyColumns = `id, tenant, label, scopes, hash, created_by, created_at, last_used_at, revoked_at`

// CreateAPIKey stores k; a zero CreatedAt is now. An id that exists gives agate.EInvalid,
// and so does a key without an id, a tenant or a hash.
func (s *Store) CreateAPIKey(ctx context.Context, k agate.APIKey) error {
	if k.ID == "" || k.Tenant == "" || k.Hash == "" {
		return fmt.Errorf("sqlite create api key: %w",
			agate.Errorf(agate.EInvalid, "An API key needs an id, a tenant and a hash."))
	}
	scopes, err := json.Marshal(nonNilScopes(k.Scopes))
	if err != nil {
		return storeErr("create api key", err)
	}
	err = s.inTx(ctx, func(tx wtx) error {
		created := k.CreatedAt
		if created.IsZero() {
			created = s.now()
		}
		res, err := tx.exec(ctx, qInsertAPIKey, k.ID, k.Tenant, k.Label, string(scopes), k.Hash, k.CreatedBy, nanos(created))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return agate.Errorf(agate.EInvalid, "API key %s exists already.", k.ID)
		}
		return nil
	})
	if err != nil {
		return storeErr("create api key", err)
	}
	return nil
}

// APIKey returns the key with id, revoked or not, or an error with code agate.ENotFound.
func (s *Store) APIKey(ctx context.Context, id string) (agate.APIKey, error) {
	k, err := scanAPIKey(s.read.QueryRowContext(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		err = apiKeyNotFound(id)
	}
	if err != nil {
		return agate.APIKey{}, storeErr("api key", err)
	}
	return k, nil
}

// APIKeys lists the tenant's keys, revoked ones included, newest first (ties broken by id).
func (s *Store) APIKeys(ctx context.Context, tenant string) ([]agate.APIKey, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+apiKeyColumns+` FROM api_keys
		WHERE tenant = ? ORDER BY created_at DESC, id DESC`, tenant)
	if err != nil {
		return nil, storeErr("api keys", err)
	}
	defer rows.Close()
	list := []agate.APIKey{}
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, storeErr("api keys", err)
		}
		list = append(list, k)
	}
	if err := rows.Err(); err != nil {
		return nil, storeErr("api keys", err)
	}
	return list, nil
}

// RevokeAPIKey marks the tenant's key id revoked at at (zero: now), unless it was revoked
// before, and returns it. It returns an error with code agate.ENotFound if the tenant has
// no such key.
func (s *Store) RevokeAPIKey(ctx context.Context, tenant, id string, at time.Time) (agate.APIKey, error) {
	var k agate.APIKey
	err := s.inTx(ctx, func(tx wtx) error {
		if at.IsZero() {
			at = s.now()
		}
		var err error
		k, err = scanAPIKey(tx.queryRow(ctx, qRevokeAPIKey, id, tenant, nanos(at)))
		if errors.Is(err, sql.ErrNoRows) {
			return apiKeyNotFound(id)
		}
		return err
	})
	if err != nil {
		return agate.APIKey{}, storeErr("revoke api key", err)
	}
	return k, nil
}

// TouchAPIKey sets the key's LastUsedAt to at (zero: now), unless it is later already. An
// unknown id is ignored.
func (s *Store) TouchAPIKey(ctx context.Context, id string, at time.Time) error {
	err := s.inTx(ctx, func(tx wtx) error {
		if at.IsZero() {
			at = s.now()
		}
		_, err := tx.exec(ctx, qTouchAPIKey, id, nanos(at))
		return err
	})
	if err != nil {
		return storeErr("touch api key", err)
	}
	return nil
}

func apiKeyNotFound(id string) error {
	return agate.Errorf(agate.ENotFound, "API key %s was not found.", id)
}

func scanAPIKey(row interface{ Scan(...any) error }) (agate.APIKey, error) {
	var (
		k             agate.APIKey
		scopes        string
		created       int64
		used, revoked sql.NullInt64
	)
	err := row.Scan(&k.ID, &k.Tenant, &k.Label, &scopes, &k.Hash, &k.CreatedBy, &created, &used, &revoked)
	if err != nil {
		return agate.APIKey{}, err
	}
	if err := json.Unmarshal([]byte(scopes), &k.Scopes); err != nil {
		return agate.APIKey{}, fmt.Errorf("api key %s scopes: %w", k.ID, err)
	}
	k.Scopes = nonNilScopes(k.Scopes)
	k.CreatedAt = fromNanos(created)
	if used.Valid {
		t := fromNanos(used.Int64)
		k.LastUsedAt = &t
	}
	if revoked.Valid {
		t := fromNanos(revoked.Int64)
		k.RevokedAt = &t
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
