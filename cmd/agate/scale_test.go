package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// envChild makes the test binary run the gateway instead of the tests, so that a test can
// start replicas as separate processes.
const envChild = "AGATE_TEST_CHILD"

func TestMain(m *testing.M) {
	if cmd := os.Getenv(envChild); cmd != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := run(ctx, []string{"agate", cmd}, os.Getenv, os.Stdin, os.Stdout, os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "agate:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startProcess runs the gateway as a child process with env over the test defaults and
// returns it once it listens; it is stopped with SIGTERM when the test ends.
func startProcess(t *testing.T, env map[string]string) *testGateway {
	t.Helper()
	vars := map[string]string{
		envChild: "serve", "AGATE_ADDR": "127.0.0.1:0", "AGATE_DATA_DIR": t.TempDir(),
		"LOG_LEVEL": "warn", "AGATE_SHUTDOWN_GRACE": "2s",
	}
	for k, v := range env {
		vars[k] = v
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = os.Environ()
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		t.Fatalf("replica did not start: %v\n%s", err, logs)
	}
	go func() { done <- cmd.Wait() }()
	g := &testGateway{URL: strings.TrimSpace(strings.TrimPrefix(line, "agate listening on ")), logs: logs}
	stopped := false
	g.kill = func() {
		stopped = true
		cmd.Process.Kill()
		<-done
	}
	g.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			return err
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			return fmt.Errorf("replica did not stop in time")
		}
	}
	t.Cleanup(func() {
		if err := g.stop(); err != nil {
			t.Errorf("stop replica: %v\n%s", err, logs)
		}
		if t.Failed() {
			t.Logf("replica %s logs:\n%s", g.URL, logs)
		}
	})
	return g
}

// freshPostgres creates an empty database on the test server for t and returns its DSN.
func freshPostgres(t *testing.T) string {
	t.Helper()
	server := os.Getenv("AGATE_TEST_POSTGRES")
	if server == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("AGATE_TEST_POSTGRES is not set; make test sets it from scripts/services.sh up")
		}
		t.Skip("set AGATE_TEST_POSTGRES to run against a real PostgreSQL")
	}
	cc, err := pgx.ParseConfig(server)
	if err != nil {
		t.Fatal(err)
	}
	name := "agate_scale_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	exec := func(sql string) {
		conn, err := pgx.ConnectConfig(context.Background(), cc)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec("CREATE DATABASE " + name)
	t.Cleanup(func() { exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)") })
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cc.User, cc.Host, cc.Port, name)
}

// waitForGroup waits until the consumer group has members replicas, all assigned.
func waitForGroup(t *testing.T, brokers []string, group string, members int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	deadline := time.Now().Add(30 * time.Second)
	for {
		groups, err := adm.DescribeGroups(context.Background(), group)
		if err == nil {
			g := groups[group]
			if g.State == "Stable" && len(g.Members) == members {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer group %s did not settle with %d members: %+v %v", group, members, groups, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestThreeReplicasAreOneGateway runs three gateway processes sharing PostgreSQL, Kafka
// (kfake on a loopback port) and, when available, Redis. 300 turns in 60 sessions are
// sent to random replicas while an SSE client per session follows it on a random replica
// and, halfway, resumes on another one with Last-Event-ID. Every client must get its
// session's complete stream in order, every turn must run exactly once, and the turns
// must be spread over the replicas.
func TestThreeReplicasAreOneGateway(t *testing.T) {
	dsn := freshPostgres(t)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	u := newUpstream(t)
	env := withUpstream(u, map[string]string{
		"POSTGRES_DSN": dsn, "KAFKA_BOOTSTRAP_SERVERS": strings.Join(cluster.ListenAddrs(), ","),
		"KAFKA_PARTITIONS": "12", "AGATE_DEFAULT_TENANT": "scale", "AGATE_WORKERS": "16",
	})
	if url := os.Getenv("AGATE_TEST_REDIS"); url != "" {
		env["REDIS_URL"] = url
	}
	var replicas []*testGateway
	for i := range 3 {
		env := overlay(env, map[string]string{"AGATE_REPLICA_ID": fmt.Sprintf("r%d", i), "LLM_MODEL": fmt.Sprintf("gpt-r%d", i)})
		replicas = append(replicas, startProcess(t, env))
	}
	waitForGroup(t, cluster.ListenAddrs(), "agate", 3)

	const sessions, turns = 60, 5
	pick := func(not *testGateway) *testGateway {
		for {
			if g := replicas[rand.IntN(len(replicas))]; g != not {
				return g
			}
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for s := range sessions {
		wg.Go(func() {
			if err := followSession(t, s, turns, pick); err != nil {
				errs <- fmt.Errorf("session %d: %w", s, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Each turn called the model once, and the replicas shared them.
	calls := map[string]int{}
	perReplica := map[string]int{}
	for _, c := range u.calls() {
		calls[c.Messages[len(c.Messages)-1].Content]++
		perReplica[c.Model]++
	}
	if len(calls) != sessions*turns {
		t.Errorf("the model was asked about %d distinct messages, want %d", len(calls), sessions*turns)
	}
	for msg, n := range calls {
		if n != 1 {
			t.Errorf("turn of %q ran %d times", msg, n)
		}
	}
	for i := range replicas {
		if perReplica[fmt.Sprintf("gpt-r%d", i)] == 0 {
			t.Errorf("replica r%d ran no turn: %v", i, perReplica)
		}
	}
	t.Logf("turns per replica: %v", perReplica)
}

// overlay returns a copy of a with b laid over it.
func overlay(a, b map[string]string) map[string]string {
	out := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// followSession sends turns messages into a new session, each to a random replica, while a
// client follows the session's stream and resumes it on another replica after the second
// answer; it checks the stream the client saw.
func followSession(t *testing.T, s, turns int, pick func(not *testGateway) *testGateway) error {
	msg := func(k int) string { return fmt.Sprintf("session %d message %d", s, k) }
	first := pick(nil)
	a := first.send(t, "", msg(0))
	on := pick(nil)
	stream := on.subscribe(t, a.SessionID, "")
	go func() {
		for k := 1; k < turns; k++ {
			pick(nil).send(t, a.SessionID, msg(k))
		}
	}()

	var got []frame
	finals := 0
	deadline := time.AfterFunc(60*time.Second, func() { stream.body.Close() })
	defer deadline.Stop()
	for finals < turns {
		f := stream.next(t)
		got = append(got, f)
		if !agate.Terminal(f.Event) {
			continue
		}
		finals++
		if finals == 2 {
			stream.body.Close()
			on = pick(on)
			stream = on.subscribe(t, a.SessionID, f.ID)
			deadline.Stop()
			deadline = time.AfterFunc(60*time.Second, func() { stream.body.Close() })
		}
	}

	if err := checkStream(got, msg, turns); err != nil {
		var b strings.Builder
		for _, f := range got {
			fmt.Fprintf(&b, "\n  %s %s %q %q", f.ID, f.Event, f.Data.Message, f.Data.Delta)
		}
		return fmt.Errorf("%w; frames:%s", err, b.String())
	}
	return nil
}

// checkStream checks what a client following a session saw.
func checkStream(got []frame, msg func(int) string, turns int) error {
	// Stored events: seq 1, 2, 3… without a gap or a repeat; user messages in the order
	// sent; each answer the reply to the message before it.
	var seq int64
	var lastUser string
	users, text := 0, ""
	asked := map[string]string{} // user event id → message
	for _, f := range got {
		ev := f.Data
		if f.Event == agate.TypeStream {
			text += ev.Delta
			continue
		}
		if ev.Seq != seq+1 {
			return fmt.Errorf("event %s has seq %d after %d", f.Event, ev.Seq, seq)
		}
		seq = ev.Seq
		switch f.Event {
		case agate.TypeUserMessage:
			if ev.Message != msg(users) {
				return fmt.Errorf("user message %q, want %q", ev.Message, msg(users))
			}
			users++
			lastUser = ev.Message
			asked[ev.EventID.String()] = ev.Message
		case agate.TypeStarted:
			text = ""
		case agate.TypeFinal:
			if ev.Metadata["status"] != agate.StatusOK {
				return fmt.Errorf("turn ended with %v: %s", ev.Metadata, ev.Message)
			}
			if want := reply(asked[fmt.Sprint(ev.Metadata["turn_id"])]); ev.Message != want {
				return fmt.Errorf("final %q, want %q", ev.Message, want)
			}
			if !strings.HasPrefix(ev.Message, text) {
				return fmt.Errorf("streamed %q is not a prefix of the final %q", text, ev.Message)
			}
		}
	}
	if users != turns || lastUser != msg(turns-1) {
		return fmt.Errorf("saw %d user messages, want %d", users, turns)
	}
	return nil
}
