package redis_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/agate-gw/agate/redis"
	goredis "github.com/redis/go-redis/v9"
)

// The tests in this package run against a real Redis named by AGATE_TEST_REDIS; the
// outage tests also start private redis-server processes on spare loopback ports, so that
// stopping them never disturbs the shared server.

const envRedis = "AGATE_TEST_REDIS"

// skipUnless skips t, or fails it in CI, with the reason.
func skipUnless(t testing.TB, ok bool, reason string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI must run this test)", reason)
	}
	t.Skip(reason)
}

// redisURL returns the shared test server's URL.
func redisURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(envRedis)
	skipUnless(t, u != "", "set "+envRedis+" (e.g. redis://127.0.0.1:6379/0) to run the Redis tests")
	return u
}

// newClient returns a client for url, closed when the test ends.
func newClient(t testing.TB, url string) *goredis.Client {
	t.Helper()
	c, err := redis.NewClient(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sharedClient returns a client of the shared test server, checked with PING.
func sharedClient(t testing.TB) *goredis.Client {
	t.Helper()
	c := newClient(t, redisURL(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("%s=%s: %v", envRedis, redisURL(t), err)
	}
	return c
}

// testPrefix returns a key prefix of the test's own, and deletes its keys when the test
// ends.
func testPrefix(t testing.TB, c *goredis.Client) string {
	t.Helper()
	prefix := "agatetest:" + rand.Text()[:12] + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return prefix
}

// server is a private redis-server on a spare loopback port.
type server struct {
	t    testing.TB
	bin  string
	port int
	dir  string // working directory, where SHUTDOWN SAVE writes dump.rdb
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// startServer starts a private redis-server.
func startServer(t testing.TB) *server {
	t.Helper()
	redisURL(t) // the private servers are part of the Redis tests
	bin, err := exec.LookPath("redis-server")
	skipUnless(t, err == nil, "redis-server is not installed (apt-get install redis-server)")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &server{t: t, bin: bin, port: port, dir: t.TempDir()}
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *server) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }

// start starts the server (again) on its port, loading dump.rdb if there is one, and
// waits until it answers.
func (s *server) start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--logfile", filepath.Join(s.dir, "redis.log"))
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan struct{})
	s.done = done
	go func(cmd *exec.Cmd) { cmd.Wait(); close(done) }(s.cmd)

	c, err := goredis.ParseURL(s.url())
	if err != nil {
		s.t.Fatal(err)
	}
	c.MaxRetries = -1
	probe := goredis.NewClient(c)
	defer probe.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := probe.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redis-server on port %d exited: %s", s.port, log)
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on port %d does not answer: %v", s.port, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// shutdown stops the server with SHUTDOWN SAVE or NOSAVE and waits for it to exit.
func (s *server) shutdown(save bool) {
	s.t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.port), MaxRetries: -1})
	defer c.Close()
	mode := "NOSAVE"
	if save {
		mode = "SAVE"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The server closes the connection instead of answering a successful SHUTDOWN.
	if err := c.Do(ctx, "SHUTDOWN", mode).Err(); err != nil && !errors.Is(err, net.ErrClosed) && err.Error() != "EOF" && !isConnReset(err) {
		s.t.Logf("SHUTDOWN %s: %v", mode, err)
	}
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Fatalf("redis-server on port %d did not exit after SHUTDOWN %s", s.port, mode)
	}
}

func isConnReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}

// kill kills the server if it runs, and waits for it.
func (s *server) kill() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Kill()
	<-s.done
}

// eventually calls f until it returns true, failing t after 10s. It never asserts on
// how long that took.
func eventually(t testing.TB, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
