package sqlite

import (
	"path/filepath"
	"testing"
)

// TestConnectionsAreConfigured checks the settings the write path relies on: WAL (readers
// never wait for the writer), foreign keys (deletes cascade), a busy timeout, a single
// write connection, and a read pool that cannot write.
func TestConnectionsAreConfigured(t *testing.T) {
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "agate.db"), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	for _, tc := range []struct{ pragma, want string }{
		{"journal_mode", "wal"},
		{"synchronous", "2"}, // FULL: an acknowledged commit is on disk
		{"foreign_keys", "1"},
		{"busy_timeout", "5000"},
	} {
		var got string
		if err := s.write.QueryRowContext(t.Context(), "PRAGMA "+tc.pragma).Scan(&got); err != nil {
			t.Fatalf("PRAGMA %s: %v", tc.pragma, err)
		}
		if got != tc.want {
			t.Errorf("PRAGMA %s = %s, want %s", tc.pragma, got, tc.want)
		}
	}
	if n := s.write.Stats().MaxOpenConnections; n != 1 {
		t.Errorf("write pool has up to %d connections, want 1", n)
	}
	if _, err := s.read.ExecContext(t.Context(), `DELETE FROM sessions`); err == nil {
		t.Error("the read pool can write")
	}

	relaxed, err := Open(t.Context(), filepath.Join(t.TempDir(), "relaxed.db"), Config{Relaxed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer relaxed.Close()
	var got string
	if err := relaxed.write.QueryRowContext(t.Context(), "PRAGMA synchronous").Scan(&got); err != nil || got != "1" {
		t.Errorf("relaxed store: PRAGMA synchronous = %s (%v), want 1 (NORMAL)", got, err)
	}
}
