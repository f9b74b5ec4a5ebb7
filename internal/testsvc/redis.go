package testsvc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Redis is a private redis-server on a spare loopback port, that a test may stop and start
// again without disturbing anyone else. It persists nothing unless stopped with
// Shutdown(true). Its methods must be called from the test's goroutine, Kill excepted.
type Redis struct {
	t    testing.TB
	bin  string
	port int
	dir  string // working directory, where SHUTDOWN SAVE writes dump.rdb
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// StartRedis starts a private redis-server for t, waits until it answers, and kills it at
// cleanup. Without redis-server on PATH t is skipped, or fails in CI.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		missing(t, "redis-server is not installed (apt-get install redis-server)")
	}
	s := &Redis{t: t, bin: bin, port: sparePort(t), dir: t.TempDir()}
	s.Start()
	t.Cleanup(s.Kill)
	return s
}

// URL returns the server's URL, redis://127.0.0.1:port/0.
func (s *Redis) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }

// Start starts the stopped server again on its port, loading dump.rdb if there is one, and
// waits until it answers. It fails the test if the server exits or does not answer
// within 10s.
func (s *Redis) Start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--logfile", filepath.Join(s.dir, "redis.log"))
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	done := make(chan struct{})
	s.done = done
	go func(cmd *exec.Cmd) { cmd.Wait(); close(done) }(s.cmd) // ended by Shutdown or Kill

	c, err := goredis.ParseURL(s.URL())
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

// Shutdown stops the server with SHUTDOWN SAVE (so that Start brings its data back) or
// SHUTDOWN NOSAVE, and waits for it to exit. It fails the test if the server is still
// running 10s later.
func (s *Redis) Shutdown(save bool) {
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

// Kill kills the server (SIGKILL: nothing is saved, clients' connections are cut) if it
// runs, and waits for it to exit.
func (s *Redis) Kill() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Kill()
	<-s.done
}
