package postgres_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/postgres"
	"github.com/agate-gw/agate/turn"
	"github.com/agate-gw/agate/turn/turntest"
	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

var _ turn.Store = (*postgres.Store)(nil)

// envServer names the server the tests run against. Every test here needs it: without it
// they skip, except in CI, where they fail.
const envServer = "AGATE_TEST_POSTGRES"

// serverDSN returns the DSN of the test server, whose user may create databases.
func serverDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(envServer)
	if dsn != "" {
		return dsn
	}
	msg := envServer + " is not set: set it to a DSN such as " +
		"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable to run the Postgres tests " +
		"(`bash scripts/services.sh up` starts a server and prints one)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; CI must run them, not skip them")
	}
	t.Skip(msg)
	return ""
}

// freshDatabase creates an empty database for t on the test server, drops it at cleanup
// (after the stores opened on it are closed: cleanups run last-registered first) and
// returns its DSN.
func freshDatabase(t testing.TB) string {
	t.Helper()
	server := serverDSN(t)
	name := "agate_test_" + randomHex(t, 6)
	exec := func(ctx context.Context, sql string) error {
		conn, err := pgx.Connect(ctx, server)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec(t.Context(), "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return withDatabase(t, server, name)
}

// withDatabase returns dsn with its database replaced by name.
func withDatabase(t testing.TB, dsn, name string) string {
	t.Helper()
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("%s is not a valid URL: %v", envServer, err)
		}
		u.Path, u.RawPath = "/"+name, ""
		return u.String()
	}
	return dsn + " dbname=" + name // key=value: the last setting wins
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// open opens a store on the database at dsn and closes it at cleanup.
func open(t testing.TB, dsn string, cfg postgres.Config) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), dsn, cfg)
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
	t.Parallel()
	serverDSN(t)
	turntest.RunStoreTests(t, func(t *testing.T, o turntest.Options) turn.Store {
		return open(t, freshDatabase(t), postgres.Config{MaxConns: 8, Bus: o.Bus, Origin: o.Origin})
	})
}

func wantCode(t *testing.T, what string, err error, want agate.Code) {
	t.Helper()
	if got := agate.ErrorCode(err); got != want {
		t.Errorf("%s: error code %q (%v), want %q", what, got, err, want)
	}
}

func TestConcurrentAcceptsCreateOneSession(t *testing.T) {
	t.Parallel()
	s := open(t, freshDatabase(t), postgres.Config{MaxConns: 8})
	id := uuid.New()
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			in := agate.Inbound{Tenant: "acme", SessionID: id, Message: fmt.Sprint("message ", i)}
			if _, err := s.Accept(t.Context(), in); err != nil {
				t.Errorf("Accept %d into the new session: %v", i, err)
			}
		})
	}
	wg.Wait()
	sess, err := s.Session(t.Context(), "acme", id)
	if err != nil {
		t.Fatal(err)
	}
	if sess.LastSeq != n {
		t.Errorf("LastSeq = %d, want %d", sess.LastSeq, n)
	}
	list, err := s.Sessions(t.Context(), "acme", uuid.Nil, 10)
	if err != nil || len(list) != 1 {
		t.Errorf("Sessions = %d sessions (%v), want 1", len(list), err)
	}
	wantSeqs(t, s, id, n)
}

// wantSeqs checks that the session's events have the seqs 1…n, each event id once.
func wantSeqs(t *testing.T, s *postgres.Store, id uuid.UUID, n int) []agate.Event {
	t.Helper()
	evs, err := s.Events(t.Context(), id, 0, n+100)
	if err != nil {
		t.Fatal(err)
	}
	var got, want []int64
	ids := map[uuid.UUID]bool{}
	for i, ev := range evs {
		got = append(got, ev.Seq)
		want = append(want, int64(i+1))
		if ids[ev.EventID] {
			t.Errorf("event id %v stored twice", ev.EventID)
		}
		ids[ev.EventID] = true
	}
	if len(evs) != n {
		t.Errorf("stored %d events, want %d", len(evs), n)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("seqs are not 1…%d (-want +got):\n%s", len(evs), d)
	}
	return evs
}

func TestTextPostgresCannotKeepIsInvalid(t *testing.T) {
	t.Parallel()
	s := open(t, freshDatabase(t), postgres.Config{})
	acc, err := s.Accept(t.Context(), agate.Inbound{Tenant: "acme", Message: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	id := acc.Turn.SessionID

	_, err = s.Accept(t.Context(), agate.Inbound{Tenant: "acme", SessionID: id, Message: "nul \x00 here"})
	wantCode(t, "Accept of a message with NUL", err, agate.EInvalid)
	ev := agate.Event{SessionID: id, Role: agate.RoleTool, Type: agate.TypeToolResult, Message: "ok",
		Metadata: map[string]any{"output": "nul \x00 here"}}
	_, err = s.Append(t.Context(), nil, ev)
	wantCode(t, "Append of metadata with NUL", err, agate.EInvalid)

	wantSeqs(t, s, id, 1)
	if sess, err := s.Session(t.Context(), "acme", id); err != nil || sess.LastSeq != 1 {
		t.Errorf("session after refused writes: LastSeq %d (%v), want 1", sess.LastSeq, err)
	}
}

func TestMigrateConcurrentlyThenOpen(t *testing.T) {
	t.Parallel()
	dsn := freshDatabase(t)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			if err := postgres.Migrate(t.Context(), dsn); err != nil {
				t.Errorf("Migrate %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	s := open(t, dsn, postgres.Config{})
	if _, err := s.Accept(t.Context(), agate.Inbound{Tenant: "acme", Message: "hi"}); err != nil {
		t.Fatal(err)
	}
	if err := postgres.Migrate(t.Context(), dsn); err != nil {
		t.Errorf("Migrate of an up-to-date database: %v", err)
	}

	err := postgres.Migrate(t.Context(), withDatabase(t, serverDSN(t), "agate_test_missing_"+randomHex(t, 4)))
	wantCode(t, "Migrate of a missing database", err, agate.EUnavailable)
}

func TestConnectionsAreConfigured(t *testing.T) {
	t.Parallel()
	dsn := freshDatabase(t)
	for _, tc := range []struct {
		cfg                    postgres.Config
		maxConns               int32
		timeout, idleInTx, app string
	}{
		{postgres.Config{}, 16, "5s", "5s", "agate"},
		{postgres.Config{MaxConns: 3, StatementTimeout: 250 * time.Millisecond}, 3, "250ms", "250ms", "agate"},
		{postgres.Config{StatementTimeout: -1}, 16, "0", "0", "agate"},
	} {
		s := open(t, dsn, tc.cfg)
		pool := postgres.PoolOf(s)
		if got := pool.Config().MaxConns; got != tc.maxConns {
			t.Errorf("%+v: pool MaxConns = %d, want %d", tc.cfg, got, tc.maxConns)
		}
		var timeout, idleInTx, app string
		err := pool.QueryRow(t.Context(), `SELECT current_setting('statement_timeout'),
			current_setting('idle_in_transaction_session_timeout'), current_setting('application_name')`).
			Scan(&timeout, &idleInTx, &app)
		if err != nil {
			t.Fatal(err)
		}
		if timeout != tc.timeout || idleInTx != tc.idleInTx || app != tc.app {
			t.Errorf("%+v: statement_timeout %s, idle_in_transaction_session_timeout %s, application_name %s; want %s, %s, %s",
				tc.cfg, timeout, idleInTx, app, tc.timeout, tc.idleInTx, tc.app)
		}
	}
}

// TestLockedSessionTimesOutAsUnavailable holds a session's row lock from another
// connection, as a stuck writer would: Accept gives up after the statement timeout with
// agate.EUnavailable instead of hanging, and works once the lock is gone.
func TestLockedSessionTimesOutAsUnavailable(t *testing.T) {
	t.Parallel()
	dsn := freshDatabase(t)
	s := open(t, dsn, postgres.Config{StatementTimeout: 300 * time.Millisecond})
	acc, err := s.Accept(t.Context(), agate.Inbound{Tenant: "acme", Message: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	id := acc.Turn.SessionID

	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE`, id); err != nil {
		t.Fatal(err)
	}
	_, err = s.Accept(t.Context(), agate.Inbound{Tenant: "acme", SessionID: id, Message: "blocked"})
	wantCode(t, "Accept into a locked session", err, agate.EUnavailable)
	_, err = s.Append(t.Context(), nil, agate.Event{SessionID: id, Role: agate.RoleAssistant, Type: agate.TypeStarted})
	wantCode(t, "Append to a locked session", err, agate.EUnavailable)
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}

	if _, err := s.Accept(t.Context(), agate.Inbound{Tenant: "acme", SessionID: id, Message: "free"}); err != nil {
		t.Fatalf("Accept after the lock is released: %v", err)
	}
	wantSeqs(t, s, id, 2)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = s.Accept(ctx, agate.Inbound{Tenant: "acme", SessionID: id, Message: "cancelled"})
	if !errors.Is(err, context.Canceled) || agate.ErrorCode(err) == agate.EUnavailable {
		t.Errorf("Accept with a cancelled context = %v, want context.Canceled as it is", err)
	}
}

// The concurrent-process test: the parent and two copies of the test binary append to one
// session at once.
const (
	envAppenderDSN     = "AGATE_TEST_APPENDER_DSN"
	envAppenderSession = "AGATE_TEST_APPENDER_SESSION"
	envAppenderName    = "AGATE_TEST_APPENDER_NAME"
)

// Each process runs appendWriters goroutines of appendRounds rounds; a round appends one
// event, or two in one call every third round, and every fifth round also accepts a user
// message.
const appendWriters, appendRounds = 4, 30

// perProcess is the number of events one process stores.
func perProcess() int {
	n := 0
	for i := range appendRounds {
		n++
		if i%3 == 0 {
			n++
		}
		if i%5 == 0 {
			n++
		}
	}
	return appendWriters * n
}

// appendAll is the work of one process: its events' messages are "name/writer/round/part".
func appendAll(ctx context.Context, s *postgres.Store, id uuid.UUID, name string) error {
	var wg sync.WaitGroup
	errs := make(chan error, appendWriters)
	for w := range appendWriters {
		wg.Go(func() {
			ev := func(i, part int) agate.Event {
				return agate.Event{SessionID: id, Role: agate.RoleAssistant, Type: agate.TypeContext,
					Message: fmt.Sprintf("%s/%d/%03d/%d", name, w, i, part)}
			}
			for i := range appendRounds {
				evs := []agate.Event{ev(i, 0)}
				if i%3 == 0 {
					evs = append(evs, ev(i, 1))
				}
				if _, err := s.Append(ctx, nil, evs...); err != nil {
					errs <- fmt.Errorf("%s writer %d append %d: %w", name, w, i, err)
					return
				}
				if i%5 == 0 {
					in := agate.Inbound{Tenant: "acme", SessionID: id, Message: fmt.Sprintf("%s/%d/%03d/u", name, w, i)}
					if _, err := s.Accept(ctx, in); err != nil {
						errs <- fmt.Errorf("%s writer %d accept %d: %w", name, w, i, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// TestHelperAppender is not a test of its own: it is the child process of
// TestConcurrentAppendsFromTwoProcessesKeepSeqGapFree. It opens the store, prints "ready",
// waits for a line on stdin and appends.
func TestHelperAppender(t *testing.T) {
	dsn := os.Getenv(envAppenderDSN)
	if dsn == "" {
		return
	}
	id := uuid.MustParse(os.Getenv(envAppenderSession))
	s := open(t, dsn, postgres.Config{MaxConns: appendWriters})
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatalf("waiting for the start: %v", err)
	}
	if err := appendAll(t.Context(), s, id, os.Getenv(envAppenderName)); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentAppendsFromTwoProcessesKeepSeqGapFree(t *testing.T) {
	t.Parallel()
	dsn := freshDatabase(t)
	s := open(t, dsn, postgres.Config{MaxConns: appendWriters})
	first, err := s.Accept(t.Context(), agate.Inbound{Tenant: "acme", Message: "start"})
	if err != nil {
		t.Fatal(err)
	}
	id := first.Turn.SessionID

	type child struct {
		name   string
		wait   func() error
		stdin  io.WriteCloser
		output *bytes.Buffer
	}
	var children []child
	for _, name := range []string{"c1", "c2"} {
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperAppender$", "-test.count=1", "-test.timeout=2m")
		cmd.Env = append(os.Environ(), envAppenderDSN+"="+dsn, envAppenderSession+"="+id.String(), envAppenderName+"="+name)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		output := &bytes.Buffer{} // stderr, then stdout once the child is done
		cmd.Stderr = output
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready, done := make(chan bool, 1), make(chan string)
		go func() {
			var rest strings.Builder
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if sc.Text() == "ready" {
					ready <- true
				} else {
					fmt.Fprintln(&rest, sc.Text()) // PASS, or a failure report
				}
			}
			close(ready)
			done <- rest.String()
		}()
		wait := func() error {
			rest := <-done // all of stdout is read: Wait may close the pipe
			err := cmd.Wait()
			output.WriteString(rest)
			return err
		}
		if !<-ready {
			_ = wait()
			t.Fatalf("appender %s exited before it was ready:\n%s", name, output)
		}
		children = append(children, child{name, wait, stdin, output})
	}

	// Start everyone at once: the children read the line, the parent appends too.
	for _, c := range children {
		if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
			t.Fatal(err)
		}
	}
	if err := appendAll(t.Context(), s, id, "parent"); err != nil {
		t.Error(err)
	}
	for _, c := range children {
		if err := c.wait(); err != nil {
			t.Errorf("appender %s: %v\n%s", c.name, err, c.output)
		}
	}
	if t.Failed() {
		return
	}

	n := 1 + 3*perProcess()
	evs := wantSeqs(t, s, id, n)
	// Each writer's events are stored in the order it wrote them, and a two-event Append
	// takes two consecutive seqs.
	last := map[string]string{}
	writers := map[string]bool{}
	for i, ev := range evs[1:] {
		parts := strings.Split(ev.Message, "/")
		if len(parts) != 4 {
			t.Fatalf("event %d message %q", ev.Seq, ev.Message)
		}
		writer, at := strings.Join(parts[:2], "/"), strings.Join(parts[2:], "/")
		writers[parts[0]] = true
		if at <= last[writer] {
			t.Errorf("seq %d: writer %s wrote %s after %s", ev.Seq, writer, at, last[writer])
		}
		last[writer] = at
		if parts[3] == "1" && evs[i].Message != strings.Join(append(parts[:3:3], "0"), "/") {
			t.Errorf("seq %d (%s) does not follow the first event of its Append (seq %d is %s)",
				ev.Seq, ev.Message, evs[i].Seq, evs[i].Message)
		}
	}
	switches := 0
	for i := 2; i < len(evs); i++ {
		a, _, _ := strings.Cut(evs[i].Message, "/")
		b, _, _ := strings.Cut(evs[i-1].Message, "/")
		if a != b {
			switches++
		}
	}
	t.Logf("%d events; the writing process changed %d times along the log", n, switches)
	if len(writers) != 3 {
		t.Errorf("events from processes %v, want parent, c1 and c2", writers)
	}
	if sess, err := s.Session(t.Context(), "acme", id); err != nil || sess.LastSeq != int64(n) {
		t.Errorf("LastSeq = %d (%v), want %d", sess.LastSeq, err, n)
	}
}
