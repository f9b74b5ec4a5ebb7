package testsvc

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// Postgres is a private PostgreSQL in a temporary directory, on a spare loopback port, that
// a test may stop and start again without disturbing anyone else. Its methods must be
// called from the test's goroutine.
type Postgres struct {
	bin, dir string
	port     int
	as       []string // runs a command as the server's OS user
	dsn      string
}

// StartPostgres initialises and starts a server for t and stops it at cleanup. It needs
// PostgreSQL's server binaries (Debian: /usr/lib/postgresql/*/bin, the newest version
// first, else initdb on PATH), and the postgres OS user and runuser when the test runs as
// root, since initdb and postgres refuse to run as root. Without them t is skipped, or
// fails in CI.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	unable := func(msg string) {
		t.Helper()
		missing(t, msg+": this test starts a private PostgreSQL (Debian package postgresql)")
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	slices.SortFunc(bins, func(a, b string) int { return version(b) - version(a) }) // newest first
	if path, err := exec.LookPath("initdb"); err == nil {
		bins = append(bins, path)
	}
	if len(bins) == 0 {
		unable("initdb not found in /usr/lib/postgresql/*/bin or on PATH")
	}
	pg := &Postgres{bin: filepath.Dir(bins[0])}

	dir, err := os.MkdirTemp("", "agate-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pg.dir = dir
	if os.Geteuid() == 0 { // initdb and postgres refuse to run as root
		u, err := user.Lookup("postgres")
		if err != nil {
			unable("running as root, and there is no postgres OS user to run the server as")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		runuser, err := exec.LookPath("runuser")
		if err != nil {
			unable("running as root, and runuser is not installed")
		}
		pg.as = []string{runuser, "-u", "postgres", "--"}
	}

	pg.port = sparePort(t)
	pg.dsn = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", pg.port)

	pg.run(t, "initdb", "-D", pg.data(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
	pg.Start(t)
	t.Cleanup(func() {
		// Stopping a stopped server fails; that is fine.
		argv := pg.command("pg_ctl", "-D", pg.data(), "stop", "-m", "immediate")
		_ = exec.Command(argv[0], argv[1:]...).Run()
	})
	return pg
}

// DSN returns the server's DSN: user postgres (trusted, no password), database postgres.
func (pg *Postgres) DSN() string { return pg.dsn }

func (pg *Postgres) data() string { return filepath.Join(pg.dir, "data") }

// Start starts the stopped server again, on the same port and data directory, and waits
// until it accepts connections. It fails t if the server does not start.
func (pg *Postgres) Start(t testing.TB) {
	t.Helper()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", pg.port, pg.dir)
	pg.run(t, "pg_ctl", "-D", pg.data(), "-l", filepath.Join(pg.dir, "log"), "-w", "-t", "20", "-o", opts, "start")
}

// Stop stops the server the hard way (pg_ctl stop -m immediate): clients' connections are
// cut, as in a crash. It fails t if the server was not running.
func (pg *Postgres) Stop(t testing.TB) {
	t.Helper()
	pg.run(t, "pg_ctl", "-D", pg.data(), "-w", "stop", "-m", "immediate")
}

func (pg *Postgres) command(name string, args ...string) []string {
	return append(append(slices.Clone(pg.as), filepath.Join(pg.bin, name)), args...)
}

func (pg *Postgres) run(t testing.TB, name string, args ...string) {
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
