// Package postgres is the production store of Agate: sessions, their event logs, turns,
// idempotency keys, the outbox of the event bus and its dead letters, API keys and the token
// usage ledger in PostgreSQL, through pgx/v5. It keeps the same contract as the embedded sqlite store and passes the same
// conformance suite (turntest).
//
// Several gateway processes may share one database. A write transaction takes the row lock
// of each session it writes to by incrementing sessions.last_seq (UPDATE … RETURNING), so
// writers to one session queue in the database and sequence numbers stay gap-free and in
// order without SERIALIZABLE retries. Transactions run at READ COMMITTED.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"sync"
	"time"

	"github.com/agate-gw/agate"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Config tunes a Store. The zero value is ready to use.
type Config struct {
	// MaxConns is the most connections the pool opens. Default 16.
	MaxConns int
	// MinConns is the number of connections the pool keeps open even when idle. Default 0.
	MinConns int
	// StatementTimeout is the longest one statement may run, waiting for locks included,
	// before the server cancels it (the statement_timeout of every connection); a
	// connection idle inside a transaction for that long is closed by the server
	// (idle_in_transaction_session_timeout), so a stuck writer cannot hold a session's
	// lock forever. Default 5s; negative disables both.
	StatementTimeout time.Duration
	// ConnectTimeout is the longest opening a connection may take. When zero: the DSN's
	// connect_timeout, else 5s.
	ConnectTimeout time.Duration
	// Bus makes Accept and Append write the records of the event bus to the outbox, in their
	// transaction (see turn.Outbox). Default false: nothing is written to the outbox.
	Bus bool
	// Origin, when not empty, is the agate.HeaderOrigin header of every outbox record: the
	// id of this replica.
	Origin string
}

func (c Config) withDefaults() Config {
	if c.MaxConns <= 0 {
		c.MaxConns = 16
	}
	c.MinConns = max(0, min(c.MinConns, c.MaxConns))
	if c.StatementTimeout == 0 {
		c.StatementTimeout = 5 * time.Second
	}
	return c
}

// Store is a turn.Store in PostgreSQL. It is safe for concurrent use, also by several
// processes sharing the database.
//
// Reads return non-nil slices and maps. Errors carry an agate code: the ones the
// turn.Store contract names, agate.EInvalid for events that cannot be stored, and
// agate.EUnavailable when the database fails (refused or lost connection, closed store,
// statement timeout, server shutting down…). Context errors are returned as they are.
type Store struct {
	pool *pgxpool.Pool

	bus     bool   // Config.Bus
	headers string // the headers of outbox records, as JSON
	origin  string // Config.Origin

	mu   sync.Mutex
	last time.Time // latest time handed out by now
}

// Open connects to the database at dsn (a postgres:// URL or key=value string, as libpq
// takes), brings its schema up to date and returns the Store. The caller must Close it.
// Several processes may Open the same database at once: migrations take an advisory lock.
func Open(ctx context.Context, dsn string, cfg Config) (*Store, error) {
	cfg = cfg.withDefaults()
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres open: %w", err)
	}
	configure(pc.ConnConfig, cfg)
	if err := migrate(ctx, pc.ConnConfig); err != nil {
		return nil, fmt.Errorf("postgres open: %w", unavailable(ctx, err))
	}
	pc.MaxConns, pc.MinConns = int32(cfg.MaxConns), int32(cfg.MinConns)
	if cfg.StatementTimeout > 0 {
		ms := strconv.FormatInt(max(1, cfg.StatementTimeout.Milliseconds()), 10) // 0 would disable it
		pc.ConnConfig.RuntimeParams["statement_timeout"] = ms
		pc.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = ms
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres open: %w", err)
	}
	return &Store{pool: pool, bus: cfg.Bus, headers: outboxHeaders(cfg.Origin), origin: cfg.Origin}, nil
}

// Migrate connects to the database at dsn, brings its schema up to date and disconnects,
// for `agate migrate`.
func Migrate(ctx context.Context, dsn string) error {
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("postgres migrate: %w", err)
	}
	configure(cc, Config{}.withDefaults())
	if err := migrate(ctx, cc); err != nil {
		return fmt.Errorf("postgres migrate: %w", unavailable(ctx, err))
	}
	return nil
}

// configure applies what cfg says about single connections to cc.
func configure(cc *pgx.ConnConfig, cfg Config) {
	if cfg.ConnectTimeout > 0 {
		cc.ConnectTimeout = cfg.ConnectTimeout
	} else if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = 5 * time.Second
	}
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	if cc.RuntimeParams["application_name"] == "" {
		cc.RuntimeParams["application_name"] = "agate"
	}
}

// migrate applies the embedded migrations, without a statement timeout. Processes sharing
// the database take turns: each holds an advisory lock on one connection while goose works
// on another. (goose's own Postgres locker polls every 5s and does not cover its first
// look at the version table, so concurrent first runs would collide and retry.)
func migrate(ctx context.Context, cc *pgx.ConnConfig) error {
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	db := stdlib.OpenDB(*cc)
	defer db.Close() // ends the sessions, and so releases the lock whatever happens
	db.SetMaxOpenConns(2)
	lock, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, migrationLock); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer lock.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrationLock)

	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// migrationLock is the advisory lock key of migrations ("agate" in ASCII).
const migrationLock int64 = 0x61676174_65

// Close closes the pool, waiting for connections in use to be returned. Calls after the
// first return nil; other methods of a closed Store fail with agate.EUnavailable.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// Ping checks that the database answers, for readiness probes. It fails with
// agate.EUnavailable.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.retryStale(ctx, func() error { return s.pool.Ping(ctx) }); err != nil {
		return storeErr(ctx, "ping", err)
	}
	return nil
}

// now returns the current UTC time at microsecond precision (what timestamptz keeps),
// always after any time it returned before, so that updated_at orders the writes of this
// process even within one microsecond. Across processes, writes to one session never move
// its updated_at back (see qLockForAccept).
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

// inTx runs a transaction in two round trips, so that a session's row lock is held for as
// short as possible: BEGIN goes with the statements queued on first; then reads their
// results, in order, and queues the rest of the transaction on next, which goes with
// COMMIT. If anything fails, nothing is committed: a statement that fails makes the server
// skip the rest of its batch, COMMIT included, and the transaction is rolled back.
//
// A first round trip that fails on a pooled connection the server had dropped (it
// restarted, say) is sent again on a fresh one: it commits nothing, so repeating it is
// safe. The pool's other connections are closed then too, as they are likely dead as well.
func (s *Store) inTx(ctx context.Context, first *pgx.Batch, then func(br pgx.BatchResults, next *pgx.Batch) error) error {
	var conn *pgxpool.Conn
	var next pgx.Batch
	var err error
	for attempt := 1; ; attempt++ {
		if conn, err = s.pool.Acquire(ctx); err != nil {
			return err
		}
		// A new batch each time: pgx keeps in a queued query what it prepared on a connection.
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		for _, q := range first.QueuedQueries {
			b.Queue(q.SQL, q.Arguments...)
		}
		next = pgx.Batch{}
		br := conn.SendBatch(ctx, b)
		if _, err = br.Exec(); err == nil {
			err = then(br, &next)
		}
		err = closeBatch(br, err)
		if err == nil || attempt == 2 || ctx.Err() != nil || !conn.Conn().IsClosed() {
			break
		}
		conn.Release() // closed: the pool drops it
		s.pool.Reset() // and the others the server dropped with it
	}
	defer conn.Release() // a connection left inside a transaction is destroyed, not reused
	if err == nil {
		next.Queue("COMMIT")
		br := conn.SendBatch(ctx, &next)
		for range next.Len() {
			if _, err = br.Exec(); err != nil {
				break
			}
		}
		err = closeBatch(br, err)
	}
	if err != nil && ctx.Err() == nil && !conn.Conn().IsClosed() && conn.Conn().PgConn().TxStatus() != 'I' {
		_, _ = conn.Exec(ctx, "ROLLBACK")
	}
	return err
}

// closeBatch closes br, which reads what is left of its results, and returns err, or the
// error of closing if err is nil.
func closeBatch(br pgx.BatchResults, err error) error {
	if cerr := br.Close(); err == nil {
		return cerr
	}
	return err
}

// retryStale runs fn, a read, and once more if it failed on a connection that turned out
// to be dead (the server restarted since the pool last used it). A server that is really
// down fails both times.
func (s *Store) retryStale(ctx context.Context, fn func() error) error {
	err := fn()
	if err == nil || ctx.Err() != nil {
		return err
	}
	var ae *agate.Error
	var ce *pgconn.ConnectError
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &ae), errors.Is(err, pgx.ErrNoRows):
		return err // an answer
	case errors.As(err, &ce):
		return err // a fresh connection failed: the server is down
	case errors.As(err, &pe) && pe.Severity != "FATAL" && pe.Severity != "PANIC":
		return err // the server answered with an error, and the connection lives on
	}
	s.pool.Reset() // the server dropped the connection, and likely the idle others too
	return fn()
}

// retryUnsent runs fn, a write that must not run twice, and once more only if it failed
// before any of it reached the server (pgconn.SafeToRetry), say on a pooled connection the
// server had dropped.
func (s *Store) retryUnsent(ctx context.Context, fn func() error) error {
	err := fn()
	if err == nil || ctx.Err() != nil || !pgconn.SafeToRetry(err) {
		return err
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return err // a fresh connection failed: the server is down
	}
	s.pool.Reset()
	return fn()
}

// Postgres error codes the store tells apart.
const (
	codeUniqueViolation         = "23505"
	codeCharacterNotInRepertory = "22021" // e.g. NUL or bad UTF-8 in text
	codeUntranslatableCharacter = "22P05" // e.g. \u0000 in jsonb
	codeProgramLimitExceeded    = "54000" // e.g. a value too large to index
)

// storeErr adds op to err and classifies it: errors that carry an agate code and context
// errors pass through (see unavailable); text the database cannot keep is agate.EInvalid;
// anything else is the database failing, reported as agate.EUnavailable so that the API
// answers 503.
func storeErr(ctx context.Context, op string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case codeCharacterNotInRepertory, codeUntranslatableCharacter, codeProgramLimitExceeded:
			err = agate.Wrap(agate.EInvalid, err, "The text cannot be stored (it contains a NUL character or is too large).")
		}
	}
	return fmt.Errorf("postgres %s: %w", op, unavailable(ctx, err))
}

// unavailable returns err as it is if it has an agate code or ctx is done (then wrapping
// ctx's error, which pgx may have replaced by a closed connection's), else wrapped as
// agate.EUnavailable. A timeout of pgx's own, such as connecting, is not the caller's
// context: it is the database being unavailable.
func unavailable(ctx context.Context, err error) error {
	var ae *agate.Error
	switch {
	case errors.As(err, &ae):
		return err
	case ctx.Err() != nil:
		if errors.Is(err, ctx.Err()) {
			return err
		}
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	default:
		return agate.Wrap(agate.EUnavailable, err, "The session store is unavailable.")
	}
}

// isUnique reports whether err is a unique violation of constraint.
func isUnique(err error, constraint string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == codeUniqueViolation && pe.ConstraintName == constraint
}
