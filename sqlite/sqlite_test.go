package sqlite_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/sqlite"
	"github.com/agate-gw/agate/turn"
	"github.com/agate-gw/agate/turn/turntest"
	"github.com/google/go-cmp/cmp"
)

var _ turn.Store = (*sqlite.Store)(nil)

// open opens a store in the file at path and closes it at cleanup.
func open(t testing.TB, path string) *sqlite.Store {
	t.Helper()
	return openConfig(t, path, sqlite.Config{})
}

// openConfig opens a store with cfg in the file at path and closes it at cleanup.
func openConfig(t testing.TB, path string, cfg sqlite.Config) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), path, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestStore(t *testing.T) {
	turntest.RunStoreTests(t, func(t *testing.T, o turntest.Options) turn.Store {
		return openConfig(t, filepath.Join(t.TempDir(), "agate.db"), sqlite.Config{Bus: o.Bus, Origin: o.Origin})
	})
}

func TestHistorySurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nested", "dir", "agate.db") // directories are created
	s, err := sqlite.Open(t.Context(), path, sqlite.Config{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	in := agate.Inbound{Tenant: "acme", Message: "remember me", IdempotencyKey: "k", RequestHash: "h"}
	acc, err := s.Accept(t.Context(), in)
	if err != nil {
		t.Fatal(err)
	}
	id := acc.Turn.SessionID
	started := agate.Event{SessionID: id, Role: agate.RoleAssistant, Type: agate.TypeStarted}
	if _, err := s.Append(t.Context(), nil, started); err != nil {
		t.Fatal(err)
	}
	before, err := s.Events(t.Context(), id, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	sessBefore, err := s.Session(t.Context(), "acme", id)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = open(t, path)
	after, err := s.Events(t.Context(), id, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(before, after); d != "" {
		t.Errorf("events after restart (-before +after):\n%s", d)
	}
	sessAfter, err := s.Session(t.Context(), "acme", id)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(sessBefore, sessAfter); d != "" {
		t.Errorf("session after restart (-before +after):\n%s", d)
	}
	pending, err := s.Pending(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]agate.Turn{acc.Turn}, pending); d != "" {
		t.Errorf("pending turns after restart (-want +got):\n%s", d)
	}
	retry, err := s.Accept(t.Context(), in)
	if err != nil || !retry.Duplicate || retry.Event.EventID != acc.Event.EventID {
		t.Errorf("retry after restart = %+v, %v; want the first outcome, Duplicate", retry, err)
	}
	evs, err := s.Append(t.Context(), &acc.Turn, agate.Event{SessionID: id, Role: agate.RoleAssistant,
		Type: agate.TypeFinal, Metadata: map[string]any{"status": agate.StatusOK}})
	if err != nil || evs[0].Seq != 3 {
		t.Errorf("Append after restart = %+v, %v; want seq 3", evs, err)
	}
}

func TestOpenUnwritablePathFails(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(file, "agate.db") // a file stands where the directory should be
	s, err := sqlite.Open(t.Context(), path, sqlite.Config{})
	if err == nil {
		s.Close()
		t.Fatal("Open under a regular file succeeded, want an error")
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the path %s", err, path)
	}
	t.Log(err)

	if _, err := sqlite.Open(t.Context(), "", sqlite.Config{}); err == nil {
		t.Error("Open with an empty path succeeded, want an error")
	}
}
