package sqlite

import (
	"database/sql"
	"fmt"
	"io/fs"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/pressly/goose/v3"
)

// TestMigrationMovesTurnsOutOfTheOutbox fills a database of schema version 1 the way the
// store did then (an accepted turn was an outbox row 'turn:<id>'), opens it, which moves
// the turns to their table, and migrates it down again.
func TestMigrationMovesTurnsOutOfTheOutbox(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agate.db")
	db, err := sql.Open("sqlite", dsn(path, url.Values{"_foreign_keys": {"1"}}))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(t.Context(), 1); err != nil {
		t.Fatal(err)
	}

	session, gone := uuid.New(), uuid.New()
	done, pending, orphan := uuid.New(), uuid.New(), uuid.New()
	at := time.Now().UTC()
	exec := func(query string, args ...any) {
		t.Helper()
		if _, err := db.ExecContext(t.Context(), query, args...); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
	}
	exec(`INSERT INTO sessions (id, tenant, last_seq, created_at, updated_at) VALUES (?, 'acme', 3, ?, ?)`,
		session.String(), nanos(at), nanos(at))
	oldTurn := func(id, session uuid.UUID, seq int64, status string, at time.Time) {
		t.Helper()
		payload := fmt.Sprintf(`{"turn_id":%q,"session_id":%q,"tenant":"acme","persona_id":"helper","seq":%d}`, id, session, seq)
		exec(`INSERT INTO outbox (topic, key, payload, status, dedupe_key, created_at)
			VALUES ('conversation.inbound', ?, ?, ?, ?, ?)`, session.String(), payload, status, "turn:"+id.String(), nanos(at))
	}
	oldTurn(done, session, 1, "done", at)
	oldTurn(orphan, gone, 1, "pending", at.Add(time.Millisecond)) // its session was deleted
	oldTurn(pending, session, 3, "pending", at.Add(2*time.Millisecond))
	exec(`INSERT INTO outbox (topic, key, payload, created_at) VALUES ('conversation.outbound', 'k', '{}', ?)`, nanos(at))

	s, err := Open(t.Context(), path, Config{Bus: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	turns, err := s.Pending(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []agate.Turn{{ID: pending, SessionID: session, Tenant: "acme", PersonaID: "helper", Seq: 3}}
	if d := cmp.Diff(want, turns); d != "" {
		t.Errorf("pending turns after migrating up (-want +got):\n%s", d)
	}
	for id, want := range map[uuid.UUID]bool{done: true, pending: false, orphan: true} {
		if got, err := s.Finished(t.Context(), id); err != nil || got != want {
			t.Errorf("Finished(%v) = %v, %v; want %v", id, got, err, want)
		}
	}
	recs, err := s.Unsent(t.Context(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Topic != agate.TopicOutbound || recs[0].Key != "k" {
		t.Errorf("outbox after migrating up = %+v, want only the record that was not a turn", recs)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	if _, err := p.DownTo(t.Context(), 1); err != nil {
		t.Fatalf("migrate down: %v", err)
	}
	rows, err := db.QueryContext(t.Context(), `SELECT dedupe_key, status, json_extract(payload, '$.seq')
		FROM outbox ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var key sql.NullString
		var status string
		var seq int64
		if err := rows.Scan(&key, &status, &seq); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %s %d", key.String, status, seq))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	wantRows := []string{"turn:" + done.String() + " done 1", "turn:" + pending.String() + " pending 3"}
	if d := cmp.Diff(wantRows, got); d != "" {
		t.Errorf("outbox after migrating down (-want +got):\n%s", d)
	}
	if _, err := p.Up(t.Context()); err != nil {
		t.Fatalf("migrate up again: %v", err)
	}
}
