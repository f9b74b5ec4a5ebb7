package postgres_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/internal/testsvc"
	"github.com/agate-gw/agate/postgres"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TestStoreDownIsUnavailableNotAPanic stops the database under an open store: writes and
// reads fail with agate.EUnavailable (the API's 503) and leave nothing half-written, and
// once the database is back the same store works again.
func TestStoreDownIsUnavailableNotAPanic(t *testing.T) {
	t.Parallel()
	serverDSN(t) // an integration test like the others, though it runs its own server
	pg := testsvc.StartPostgres(t)
	s := open(t, pg.DSN(), postgres.Config{ConnectTimeout: 2 * time.Second})
	first, err := s.Accept(t.Context(), agate.Inbound{Tenant: "acme", Message: "before"})
	if err != nil {
		t.Fatal(err)
	}
	id := first.Turn.SessionID

	pg.Stop(t)
	// The first Accept meets the pooled connection the server dropped, the second a refused
	// connection.
	for i := range 2 {
		_, err := s.Accept(t.Context(), agate.Inbound{Tenant: "acme", SessionID: id, Message: "while down"})
		wantCode(t, fmt.Sprintf("Accept %d while the database is down", i), err, agate.EUnavailable)
	}
	_, err = s.Append(t.Context(), &first.Turn, agate.Event{SessionID: id, Role: agate.RoleAssistant, Type: agate.TypeStarted})
	wantCode(t, "Append while the database is down", err, agate.EUnavailable)
	_, err = s.Events(t.Context(), id, 0, 10)
	wantCode(t, "Events while the database is down", err, agate.EUnavailable)
	wantCode(t, "Ping while the database is down", s.Ping(t.Context()), agate.EUnavailable)

	pg.Start(t)
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("Ping after the database is back: %v", err)
	}
	again, err := s.Accept(t.Context(), agate.Inbound{Tenant: "acme", SessionID: id, Message: "after"})
	if err != nil {
		t.Fatalf("Accept after the database is back: %v", err)
	}
	if again.Event.Seq != 2 {
		t.Errorf("Accept after the outage got seq %d, want 2: a failed write left something behind", again.Event.Seq)
	}
	wantSeqs(t, s, id, 2)

	// A restart between requests goes unnoticed: the pooled connections it killed are
	// replaced by fresh ones.
	pool := postgres.PoolOf(s)
	var conns []*pgxpool.Conn
	for range 4 {
		c, err := pool.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Release() // 4 idle connections, soon dead
	}
	pg.Stop(t)
	pg.Start(t)
	for i := range 4 {
		if _, err := s.Accept(t.Context(), agate.Inbound{Tenant: "acme", SessionID: id, Message: "after a restart"}); err != nil {
			t.Errorf("Accept %d right after a restart: %v", i, err)
		}
		if _, err := s.Events(t.Context(), id, 0, 1); err != nil {
			t.Errorf("Events %d right after a restart: %v", i, err)
		}
	}
	wantSeqs(t, s, id, 6)
}
