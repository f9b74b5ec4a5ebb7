package postgres

import (
	"database/sql"
	"io/fs"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pressly/goose/v3"
)

// PoolOf exposes the pool of s to the black-box tests.
func PoolOf(s *Store) *pgxpool.Pool { return s.pool }

// Goose returns a goose provider of the store's migrations on db, for tests that migrate
// step by step.
func Goose(db *sql.DB) (*goose.Provider, error) {
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	return goose.NewProvider(goose.DialectPostgres, db, fsys, goose.WithDisableGlobalRegistry(true))
}
