package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate"
)

// gateway is a running `agate` started through run(), as a user would start it.
type testGateway struct {
	URL  string
	logs *lockedBuffer // what run wrote to stderr
	stop func() error  // shuts it down and returns run's error
	kill func()        // for a child process: SIGKILL, no goodbye
}

// lockedBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// start runs the gateway on 127.0.0.1:0 with env layered over test defaults.
func start(t *testing.T, env map[string]string) *testGateway {
	t.Helper()
	vars := map[string]string{
		"AGATE_ADDR": "127.0.0.1:0", "AGATE_DATA_DIR": t.TempDir(), "LOG_LEVEL": "warn",
		"AGATE_SHUTDOWN_GRACE": "2s",
	}
	for k, v := range env {
		vars[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	logs := &lockedBuffer{}
	go func() {
		err := run(ctx, []string{"agate"}, func(k string) string { return vars[k] }, nil, pw, logs)
		pw.CloseWithError(io.EOF)
		done <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		cancel()
		t.Fatalf("gateway did not start: %v (run: %v)", err, <-done)
	}
	go io.Copy(io.Discard, pr)
	url := strings.TrimSpace(strings.TrimPrefix(line, "agate listening on "))
	stopped := false
	g := &testGateway{URL: url, logs: logs}
	g.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(20 * time.Second):
			t.Fatal("gateway did not stop within 20s")
			return nil
		}
	}
	t.Cleanup(func() {
		if err := g.stop(); err != nil {
			t.Errorf("run returned %v", err)
		}
	})
	return g
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("response %d is not JSON: %v: %s", r.status, err, r.body)
	}
}

// do sends a request; body is sent as application/json unless header says otherwise.
func do(t *testing.T, method, url, body string, header map[string]string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return response{status: res.StatusCode, header: res.Header, body: b}
}

type accepted struct {
	SessionID string `json:"session_id"`
	EventID   string `json:"event_id"`
	Seq       int64  `json:"seq"`
}

// send posts a message and returns its ids, failing the test on anything but 200.
func (g *testGateway) send(t *testing.T, session, message string) accepted {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"session_id": session, "message": message})
	res := do(t, "POST", g.URL+"/v1/session/message", string(body), nil)
	if res.status != http.StatusOK {
		t.Fatalf("send: %d %s", res.status, res.body)
	}
	var a accepted
	res.json(t, &a)
	return a
}

// frame is one SSE event as a client sees it.
type frame struct {
	ID    string
	Event string
	Data  agate.Event
}

// sse is an open event stream.
type sse struct {
	body io.Closer
	sc   *bufio.Scanner
}

func (g *testGateway) subscribe(t *testing.T, session, lastEventID string) *sse {
	t.Helper()
	req, _ := http.NewRequest("GET", g.URL+"/v1/session/"+session+"/events", nil)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		t.Fatalf("subscribe: %d %s", res.StatusCode, b)
	}
	s := &sse{body: res.Body, sc: bufio.NewScanner(res.Body)}
	s.sc.Buffer(make([]byte, 1<<20), 1<<20)
	t.Cleanup(func() { s.body.Close() })
	return s
}

// next returns the next event frame, skipping comments and retry lines.
func (s *sse) next(t *testing.T) frame {
	t.Helper()
	var f frame
	var data bytes.Buffer
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case line == "":
			if f.Event == "" {
				continue
			}
			if err := json.Unmarshal(data.Bytes(), &f.Data); err != nil {
				t.Fatalf("frame data is not an event: %v: %s", err, data.Bytes())
			}
			return f
		case strings.HasPrefix(line, "id: "):
			f.ID = line[4:]
		case strings.HasPrefix(line, "event: "):
			f.Event = line[7:]
		case strings.HasPrefix(line, "data: "):
			data.WriteString(line[6:])
		}
	}
	t.Fatalf("stream ended: %v", s.sc.Err())
	return f
}

// untilFinal reads frames up to and including the next terminal event.
func (s *sse) untilFinal(t *testing.T) []frame {
	t.Helper()
	var out []frame
	for {
		f := s.next(t)
		out = append(out, f)
		if agate.Terminal(f.Event) {
			return out
		}
	}
}
