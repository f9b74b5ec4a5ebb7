// Package bench holds the gateway's benchmarks: the hot paths measured in CPU time per
// operation, which stays meaningful on a shared, noisy machine where wall time does not.
//
//	make bench
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/authn"
	"github.com/agate-gw/agate/httpapi"
	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/internal/cpubench"
	"github.com/agate-gw/agate/sqlite"
	"github.com/agate-gw/agate/turn"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
)

type nopModel struct{}

func (nopModel) Generate(context.Context, agate.ModelRequest, func(agate.Delta) error) (agate.Reply, error) {
	return agate.Reply{}, nil
}

func (nopModel) Models() []string { return nil }

// BenchmarkAcceptMessage is POST /v1/session/message through the whole HTTP handler
// (middleware, validation, one SQLite transaction, queueing) without the network and
// without running the turn.
func BenchmarkAcceptMessage(b *testing.B) {
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "agate.db"), sqlite.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}))
	hub := inmem.NewHub(0)
	runner := turn.New(store, nopModel{}, hub, log, turn.Config{MaxQueued: 1 << 30})
	api := httpapi.New(httpapi.Deps{Runner: runner, Model: nopModel{}, Store: store, Hub: hub, Auth: authn.Anonymous{Tenant: "public"}, Limiter: inmem.NewLimiter(inmem.LimiterConfig{})}, log, prometheus.NewRegistry(), httpapi.Config{})

	post := func(body string) {
		req := httptest.NewRequest("POST", "/v1/session/message", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("POST answered %d %s", rec.Code, rec.Body)
		}
	}
	b.Run("new-session", func(b *testing.B) {
		cpubench.Measure(b, func() {
			for b.Loop() {
				post(`{"message":"What is the capital of France? Answer in one word."}`)
			}
		})
	})
	b.Run("existing-session", func(b *testing.B) {
		id := uuid.New()
		body := fmt.Sprintf(`{"session_id":%q,"message":"What is the capital of France? Answer in one word."}`, id)
		cpubench.Measure(b, func() {
			for b.Loop() {
				post(body)
			}
		})
	})
}

// BenchmarkFanOutChunkTo100Subscribers publishes one assistant.stream chunk to a session
// with 100 live subscribers, each drained by its own goroutine as SSE writers would be.
func BenchmarkFanOutChunkTo100Subscribers(b *testing.B) {
	hub := inmem.NewHub(0)
	session := uuid.New()
	var wg sync.WaitGroup
	var received sync.WaitGroup
	subs := make([]*inmem.Subscription, 100)
	for i := range subs {
		subs[i] = hub.Subscribe(session)
		wg.Go(func() {
			for range subs[i].Events() {
				received.Done()
			}
		})
	}
	ev := agate.Event{SessionID: session, Seq: 7, Type: agate.TypeStream, Role: agate.RoleAssistant, Delta: " token", Message: "Hello token", Offset: 11}
	cpubench.Measure(b, func() {
		for b.Loop() {
			received.Add(len(subs))
			hub.Publish(ev)
			received.Wait()
		}
	})
	for _, s := range subs {
		s.Close()
	}
	wg.Wait()
}

// BenchmarkStreamChunkTo100SSEClients publishes one assistant.stream chunk to a session
// with 100 SSE clients connected over loopback, and waits until every client has read its
// frame. The cumulative message grows from 1 KiB by a token a chunk, over turns of 100
// chunks. CPU includes the clients' reads.
func BenchmarkStreamChunkTo100SSEClients(b *testing.B) {
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "agate.db"), sqlite.Config{Relaxed: true})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}))
	hub := inmem.NewHub(0)
	runner := turn.New(store, nopModel{}, hub, log, turn.Config{})
	api := httpapi.New(httpapi.Deps{Runner: runner, Model: nopModel{}, Store: store, Hub: hub, Auth: authn.Anonymous{Tenant: "public"}, Limiter: inmem.NewLimiter(inmem.LimiterConfig{})}, log, prometheus.NewRegistry(), httpapi.Config{})
	srv := httptest.NewServer(api)
	defer srv.Close()
	acc, err := runner.Send(ctx, agate.Inbound{Tenant: "public", Message: "hi"})
	if err != nil {
		b.Fatal(err)
	}
	session := acc.Turn.SessionID
	started, err := store.Append(ctx, nil, agate.Event{SessionID: session, Role: agate.RoleAssistant, Type: agate.TypeStarted})
	if err != nil {
		b.Fatal(err)
	}
	hub.Publish(started[0])

	const clients = 100
	var frames sync.WaitGroup
	var readers sync.WaitGroup
	cctx, cancel := context.WithCancel(ctx)
	// Each frame is 4 lines ("id:", "event:", "data:", blank); a stream opens with "retry:" + blank.
	frames.Add(clients * 2)
	for range clients {
		req, _ := http.NewRequestWithContext(cctx, "GET", srv.URL+"/v1/session/"+session.String()+"/events", nil)
		req.Header.Set("Last-Event-ID", fmt.Sprint(started[0].Seq))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		readers.Go(func() {
			defer res.Body.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := res.Body.Read(buf)
				for _, c := range buf[:n] {
					if c == '\n' {
						frames.Done()
					}
				}
				if err != nil {
					return
				}
			}
		})
	}
	text := strings.Repeat("token ", 170) // ~1 KiB so far
	ev := agate.Event{SessionID: session, Seq: started[0].Seq, Type: agate.TypeStream, Role: agate.RoleAssistant, Version: agate.Version}
	end := agate.Event{SessionID: session, Type: agate.TypeFinal, Role: agate.RoleAssistant, Version: agate.Version} // unstored
	frames.Wait()
	cpubench.Measure(b, func() {
		for i := 0; b.Loop(); i++ {
			if i%100 == 0 { // a new turn: clients' offsets start over
				frames.Add(clients * 4)
				hub.Publish(end)
				frames.Wait()
				ev.Message = text
			}
			frames.Add(clients * 4)
			ev.Message += "tok" + strconv.Itoa(i%100) + " "
			ev.Delta, ev.Offset = "tok"+strconv.Itoa(i%100)+" ", len(ev.Message)
			hub.Publish(ev)
			frames.Wait()
		}
	})
	cancel()
	readers.Wait()
}
