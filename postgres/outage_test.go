package postgres_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/postgres"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TestStoreDownIsUnavailableNotAPanic stops the database under an open store: writes and
// reads fail with agate.EUnavailable (the API's 503) and leave nothing half-written, and
// once the database is back the same store works again.
func TestStoreDownIsUnavailableNotAPanic(t *testing.T) {
	t.Parallel()
	serverDSN(t) // an integration test like the others, though it runs its own server
	pg := startServer(t)
	s := open(t, pg.dsn, postgres.Config{ConnectTimeout: 2 * time.Second})
	first, err := s.Accept(t.Context(), agate.Inbound{Tenant: "acme", Message: "before"})
	if err != nil {
		t.Fatal(err)
	}
	id := first.Turn.SessionID

	pg.stop(t)
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

	pg.start(t)
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
	pg.stop(t)
	pg.start(t)
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

// server is a private PostgreSQL in a temporary directory, on a spare loopback port, that
// a test may stop without disturbing anyone else.
type server struct {
	bin, dir string
	port     int
	as       []string // runs a command as the server's OS user
	dsn      string
}

// startServer initialises and starts a server for t and stops it at cleanup. It needs
// PostgreSQL's server binaries (Debian: /usr/lib/postgresql/*/bin), and the postgres OS
// user when the test runs as root.
func startServer(t *testing.T) *server {
	t.Helper()
	missing := func(msg string) {
		t.Helper()
		msg += ": this test starts a private PostgreSQL (Debian package postgresql)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	slices.SortFunc(bins, func(a, b string) int { return version(b) - version(a) }) // newest first
	if path, err := exec.LookPath("initdb"); err == nil {
		bins = append(bins, path)
	}
	if len(bins) == 0 {
		missing("initdb not found in /usr/lib/postgresql/*/bin or on PATH")
	}
	pg := &server{bin: filepath.Dir(bins[0])}

	dir, err := os.MkdirTemp("", "agate-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pg.dir = dir
	if os.Geteuid() == 0 { // initdb and postgres refuse to run as root
		u, err := user.Lookup("postgres")
		if err != nil {
			missing("running as root, and there is no postgres OS user to run the server as")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		runuser, err := exec.LookPath("runuser")
		if err != nil {
			missing("running as root, and runuser is not installed")
		}
		pg.as = []string{runuser, "-u", "postgres", "--"}
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pg.port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	pg.dsn = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", pg.port)

	pg.run(t, "initdb", "-D", pg.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
	pg.start(t)
	t.Cleanup(func() {
		// Stopping a stopped server fails; that is fine.
		argv := pg.command("pg_ctl", "-D", pg.data(), "stop", "-m", "immediate")
		_ = exec.Command(argv[0], argv[1:]...).Run()
	})
	return pg
}

func (pg *server) data() string { return filepath.Join(pg.dir, "data") }

func (pg *server) start(t *testing.T) {
	t.Helper()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", pg.port, pg.dir)
	pg.run(t, "pg_ctl", "-D", pg.data(), "-l", filepath.Join(pg.dir, "log"), "-w", "-t", "20", "-o", opts, "start")
}

// stop stops the server the hard way: clients' connections are cut, as in a crash.
func (pg *server) stop(t *testing.T) {
	t.Helper()
	pg.run(t, "pg_ctl", "-D", pg.data(), "-w", "stop", "-m", "immediate")
}

func (pg *server) command(name string, args ...string) []string {
	return append(append(slices.Clone(pg.as), filepath.Join(pg.bin, name)), args...)
}

func (pg *server) run(t *testing.T, name string, args ...string) {
	t.Helper()
	argv := pg.command(name, args...)
	out, err := exec.CommandContext(t.Context(), argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(pg.dir, "log"))
		t.Fatalf("%s: %v\n%s\nserver log:\n%s", name, err, out, log)
	}
}

// version returns the major version in a path such as /usr/lib/postgresql/15/bin/initdb.
func version(path string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return n
}
