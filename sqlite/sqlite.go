// Package sqlite is the embedded store of Agate: sessions, their event logs, turns, idempotency
// keys, the outbox of the event bus and its dead letters, API keys and the token usage ledger
// in one SQLite file, through the pure-Go driver modernc.org/sqlite.
//
// Every write runs in a BEGIN IMMEDIATE transaction on a single dedicated connection, so
// concurrent writers in the process queue in Go instead of failing with SQLITE_BUSY, and
// sequence numbers stay gap-free. Reads use a separate query-only pool and, thanks to WAL
// mode, never wait for writers.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agate-gw/agate"
	"github.com/pressly/goose/v3"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

//go:embed migrations/*.sql
var migrations embed.FS

// Config tunes a Store. The zero value is ready to use.
type Config struct {
	// BusyTimeout is how long a statement waits for a lock held by another connection or
	// process before it fails with SQLITE_BUSY. Default 5s.
	BusyTimeout time.Duration
	// ReadConns is the number of connections in the read pool. Default 4.
	ReadConns int
	// Relaxed trades durability for speed (synchronous=NORMAL): a commit survives a crash
	// of the process but not of the machine. Default false: every commit is on disk
	// (synchronous=FULL) before it returns, so an acknowledged message is never lost.
	Relaxed bool
	// Bus makes Accept and Append write the records of the event bus to the outbox, in their
	// transaction (see turn.Outbox). Default false: nothing is written to the outbox.
	Bus bool
	// Origin, when not empty, is the agate.HeaderOrigin header of every outbox record: the
	// id of this replica.
	Origin string
}

func (c Config) withDefaults() Config {
	if c.BusyTimeout <= 0 {
		c.BusyTimeout = 5 * time.Second
	}
	if c.ReadConns <= 0 {
		c.ReadConns = 4
	}
	return c
}

// Store is a turn.Store in a SQLite file. It is safe for concurrent use.
//
// Reads return non-nil slices and maps. Errors carry an agate code: the ones the turn.Store
// contract names, agate.EInvalid for events that cannot be stored, and agate.EUnavailable
// when the database itself fails (I/O error, closed store, lock timeout…). Context errors
// are returned as they are.
type Store struct {
	write *sql.DB              // exactly one connection; every write transaction runs on it
	stmts map[string]*sql.Stmt // prepared on write, by query; read-only after Open
	read  *sql.DB              // query-only pool

	bus     bool   // Config.Bus
	headers string // the headers of outbox records, as JSON
	origin  string // Config.Origin

	mu   sync.Mutex
	last time.Time // latest time handed out by now
}

// Open opens (creating it and its directory if missing) the SQLite database at path and
// brings its schema up to date. The caller must Close the Store.
func Open(ctx context.Context, path string, cfg Config) (*Store, error) {
	if path == "" {
		return nil, errors.New("sqlite open: empty path")
	}
	cfg = cfg.withDefaults()
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o750); err != nil {
		return nil, fmt.Errorf("sqlite open %s: create directory: %w", path, err)
	}
	busy := strconv.FormatInt(cfg.BusyTimeout.Milliseconds(), 10)
	synchronous := "FULL"
	if cfg.Relaxed {
		synchronous = "NORMAL"
	}

	write, err := sql.Open("sqlite", dsn(abs, url.Values{
		"_busy_timeout": {busy},
		"_journal_mode": {"WAL"},
		"_synchronous":  {synchronous},
		"_foreign_keys": {"1"},
		"_txlock":       {"immediate"},
		"_error_rc":     {"1"},
	}))
	if err != nil {
		return nil, fmt.Errorf("sqlite open %s: %w", path, err)
	}
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	if err := migrate(ctx, write); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite open %s: %w", path, err), write.Close())
	}
	stmts, err := prepareWrites(ctx, write)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite open %s: %w", path, err), write.Close())
	}

	read, err := sql.Open("sqlite", dsn(abs, url.Values{
		"_busy_timeout": {busy},
		"_query_only":   {"1"},
		"_error_rc":     {"1"},
	}))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite open %s: %w", path, err), write.Close())
	}
	read.SetMaxOpenConns(cfg.ReadConns)
	read.SetMaxIdleConns(cfg.ReadConns)
	if err := read.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite open %s: %w", path, err), read.Close(), write.Close())
	}
	return &Store{write: write, stmts: stmts, read: read, bus: cfg.Bus, headers: outboxHeaders(cfg.Origin), origin: cfg.Origin}, nil
}

// dsn returns a file: URI for the database at the absolute path abs, so that any character
// in the path is escaped and cannot be mistaken for a parameter.
func dsn(abs string, params url.Values) string {
	p := filepath.ToSlash(abs)
	if !strings.HasPrefix(p, "/") {
		p = "/" + p // file:///C:/… on Windows
	}
	u := url.URL{Scheme: "file", Path: p, RawQuery: params.Encode()}
	return u.String()
}

func migrate(ctx context.Context, db *sql.DB) error {
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// Close closes the database. Calls after the first return nil; other methods of a closed
// Store fail with agate.EUnavailable.
func (s *Store) Close() error {
	return errors.Join(s.read.Close(), s.write.Close())
}

// Ping checks that the database answers, for readiness probes. It fails with
// agate.EUnavailable.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.read.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return storeErr("ping", err)
	}
	return nil
}

// now returns the current UTC time at microsecond precision (what Postgres keeps), always
// after any time it returned before, so that updated_at orders writes even within one
// microsecond. Callers hold the write connection, so times also follow commit order.
func (s *Store) now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := time.Now().UTC().Truncate(time.Microsecond)
	if !t.After(s.last) {
		t = s.last.Add(time.Microsecond)
	}
	s.last = t
	return t
}

// storeErr adds op to err and classifies it: errors that carry an agate code and context
// errors pass through; anything else is the database failing, reported as
// agate.EUnavailable so that the API answers 503.
func storeErr(op string, err error) error {
	var ae *agate.Error
	if !errors.As(err, &ae) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		err = agate.Wrap(agate.EUnavailable, err, "The session store is unavailable.")
	}
	return fmt.Errorf("sqlite %s: %w", op, err)
}

// nanos and fromNanos convert times to and from the INTEGER columns (UTC unix nanoseconds).
func nanos(t time.Time) int64 { return t.UnixNano() }

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }
