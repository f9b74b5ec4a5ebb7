package postgres

import "github.com/jackc/pgx/v5/pgxpool"

// PoolOf exposes the pool of s to the black-box tests.
func PoolOf(s *Store) *pgxpool.Pool { return s.pool }
