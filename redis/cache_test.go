package redis_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/redis"
	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
)

var _ redis.History = (*redis.Cache)(nil)

// fakeStore is an in-memory History with an append-only log per session.
type fakeStore struct {
	mu     sync.Mutex
	events map[uuid.UUID][]agate.Event
	reads  atomic.Int64
	// afterRead, when set, is called by Messages after it has read the log and before it
	// returns, to let a test act while a read is in flight.
	afterRead func()
}

func newFakeStore() *fakeStore { return &fakeStore{events: make(map[uuid.UUID][]agate.Event)} }

// append stores an event of type typ (assistant.final with the given status) and returns it.
func (s *fakeStore) append(id uuid.UUID, typ, status, text string) agate.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	role, meta := agate.RoleUser, map[string]any{}
	if typ != agate.TypeUserMessage {
		role = agate.RoleAssistant
		if status != "" {
			meta["status"] = status
		}
	}
	ev := agate.Event{
		EventID: uuid.New(), Seq: int64(len(s.events[id]) + 1), SessionID: id, Role: role, Type: typ,
		Message: text, Metadata: meta, Version: agate.Version, CreatedAt: time.Now().UTC().Truncate(time.Microsecond),
	}
	s.events[id] = append(s.events[id], ev)
	return ev
}

// turn appends one exchange: the user's message, a tool event, and the assistant's reply.
func (s *fakeStore) turn(id uuid.UUID, text string) {
	s.append(id, agate.TypeUserMessage, "", text)
	s.append(id, agate.TypeToolResult, "", "tool output")
	s.append(id, agate.TypeFinal, agate.StatusOK, "reply to "+text)
}

func (s *fakeStore) Messages(_ context.Context, id uuid.UUID, upTo int64, limit int) ([]agate.Event, error) {
	s.reads.Add(1)
	s.mu.Lock()
	var out []agate.Event
	for _, ev := range s.events[id] {
		if ev.Seq <= upTo && (ev.Type == agate.TypeUserMessage || ev.Type == agate.TypeFinal && ev.Metadata["status"] == agate.StatusOK) {
			out = append(out, ev)
		}
	}
	hook := s.afterRead
	s.mu.Unlock()
	out = out[max(len(out)-max(limit, 0), 0):]
	if hook != nil {
		hook()
	}
	return append([]agate.Event{}, out...), nil
}

// checkFresh fails t unless the cache answers Messages(upTo, limit) exactly as the store.
func checkFresh(t *testing.T, c *redis.Cache, s *fakeStore, id uuid.UUID, upTo int64, limit int) {
	t.Helper()
	got, err := c.Messages(t.Context(), id, upTo, limit)
	if err != nil {
		t.Fatalf("Messages(upTo %d, limit %d): %v", upTo, limit, err)
	}
	want, _ := s.Messages(t.Context(), id, upTo, limit)
	s.reads.Add(-1)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Messages(upTo %d, limit %d) differs from the store (-store +cache):\n%s", upTo, limit, diff)
	}
}

func TestCacheServesRepeatedReadsFromRedis(t *testing.T) {
	client := sharedClient(t)
	prefix := testPrefix(t, client)
	s := newFakeStore()
	c := redis.NewCache(client, s, testConfig(prefix))
	id := uuid.New()
	for i := range 5 {
		s.turn(id, fmt.Sprint("question ", i))
	}

	checkFresh(t, c, s, id, math.MaxInt64, 50)
	if s.reads.Load() != 1 {
		t.Fatalf("first read: %d store reads, want 1", s.reads.Load())
	}
	for range 10 {
		checkFresh(t, c, s, id, math.MaxInt64, 50)
	}
	if s.reads.Load() != 1 {
		t.Fatalf("10 more reads: %d store reads in all, want still 1", s.reads.Load())
	}
	ttl, err := client.PTTL(t.Context(), prefix+"tx:"+id.String()).Result()
	if err != nil || ttl <= 0 || ttl > 5*time.Minute {
		t.Fatalf("TTL of %stx:%s = %v, %v; want at most the default 5m", prefix, id, ttl, err)
	}
	if c.Degraded() {
		t.Fatal("Degraded() = true with Redis up")
	}
}

func TestCacheAnswersExactlyAsTheStore(t *testing.T) {
	client := sharedClient(t)
	prefix := testPrefix(t, client)
	s := newFakeStore()
	cfg := testConfig(prefix)
	cfg.CacheEvents = 6
	long, short, empty := uuid.New(), uuid.New(), uuid.New()
	for i := range 10 { // 20 conversation events among 30
		s.turn(long, fmt.Sprint("question ", i))
	}
	s.append(long, agate.TypeFinal, agate.StatusError, "failed reply") // not conversation
	s.turn(short, "only question")

	for _, id := range []uuid.UUID{long, short, empty} {
		for _, upTo := range []int64{0, 1, 2, 3, 14, 28, 29, 30, 31, math.MaxInt64} {
			for _, limit := range []int{0, 1, 2, 5, 6, 7, 50} {
				c := redis.NewCache(client, s, cfg)
				checkFresh(t, c, s, id, upTo, limit) // filled by this read
				checkFresh(t, c, s, id, upTo, limit) // from the cache when it holds enough
			}
		}
		checkFresh(t, redis.NewCache(client, s, cfg), s, id, math.MaxInt64, 3)
	}
}

func TestCacheReadAfterAppendSeesTheAppend(t *testing.T) {
	client := sharedClient(t)
	s := newFakeStore()
	c := redis.NewCache(client, s, testConfig(testPrefix(t, client)))
	id := uuid.New()
	for i := range 20 {
		checkFresh(t, c, s, id, math.MaxInt64, 10)
		s.turn(id, fmt.Sprint("question ", i))
		c.Invalidate(t.Context(), id)
		checkFresh(t, c, s, id, math.MaxInt64, 10)
	}
}

func TestCacheDropsAFillThatRacedWithAnAppend(t *testing.T) {
	client := sharedClient(t)
	prefix := testPrefix(t, client)
	s := newFakeStore()
	c := redis.NewCache(client, s, testConfig(prefix))
	id := uuid.New()
	s.turn(id, "first question")

	// A reader misses and reads the store; before it can fill the cache, a writer appends
	// and invalidates.
	reading, resume := make(chan struct{}), make(chan struct{})
	s.afterRead = func() { close(reading); <-resume }
	done := make(chan []agate.Event)
	go func() {
		evs, err := c.Messages(context.Background(), id, math.MaxInt64, 10)
		if err != nil {
			t.Error(err)
		}
		done <- evs
	}()
	<-reading
	s.mu.Lock()
	s.afterRead = nil
	s.mu.Unlock()
	s.turn(id, "second question")
	c.Invalidate(t.Context(), id)
	close(resume)
	if old := <-done; len(old) != 2 {
		t.Fatalf("the racing read returned %d events, want the 2 it read", len(old))
	}

	if n, err := client.HExists(t.Context(), prefix+"tx:"+id.String(), "data").Result(); err != nil || n {
		t.Fatalf("the racing read's old transcript was cached (%v, %v)", n, err)
	}
	checkFresh(t, c, s, id, math.MaxInt64, 10)
}

func TestCacheNeverServesAStaleTranscriptAcrossARedisOutage(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxDirty int
	}{
		{"failed invalidations remembered per session", 0},
		{"more failed invalidations than remembered", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t)
			client := newClient(t, srv.URL())
			s := newFakeStore()
			cfg := testConfig("agatetest:")
			cfg.MaxDirty = tc.maxDirty
			c := redis.NewCache(client, s, cfg)
			sessions := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
			for _, id := range sessions {
				s.turn(id, "first question")
				checkFresh(t, c, s, id, math.MaxInt64, 10) // cached
			}

			// The server stops, saving the cached transcripts; it will come back with them.
			srv.Shutdown(true)
			for _, id := range sessions {
				s.turn(id, "question during the outage")
				c.Invalidate(t.Context(), id) // cannot reach Redis
			}
			if !c.Degraded() {
				t.Fatal("Degraded() = false with Redis down")
			}
			reads := s.reads.Load()
			for _, id := range sessions {
				checkFresh(t, c, s, id, math.MaxInt64, 10)
			}
			if s.reads.Load() != reads+int64(len(sessions)) {
				t.Fatal("reads during the outage were not served by the store")
			}

			srv.Start()
			stale, err := client.HExists(t.Context(), "agatetest:tx:"+sessions[0].String(), "data").Result()
			if err != nil || !stale {
				t.Fatalf("the restarted server does not hold the stale transcript (%v, %v); the test proves nothing", stale, err)
			}
			eventually(t, "recovered", func() bool {
				for _, id := range sessions {
					checkFresh(t, c, s, id, math.MaxInt64, 10)
				}
				return !c.Degraded()
			})
			for _, id := range sessions {
				s.turn(id, "question after the outage")
				c.Invalidate(t.Context(), id)
				checkFresh(t, c, s, id, math.MaxInt64, 10)
			}
			if tc.maxDirty == 0 { // otherwise the cache is bypassed for CacheTTL
				reads := s.reads.Load()
				for _, id := range sessions {
					checkFresh(t, c, s, id, math.MaxInt64, 10)
				}
				if s.reads.Load() != reads {
					t.Fatal("after the outage, reads are not served by Redis again")
				}
			}
		})
	}
}

func TestCacheReadsFromTheStoreWhenRedisIsUnreachable(t *testing.T) {
	client := newClient(t, hungServer(t))
	s := newFakeStore()
	c := redis.NewCache(client, s, redis.Config{ProbeEvery: time.Hour}) // default 50ms timeout
	id := uuid.New()
	s.turn(id, "question")
	checkFresh(t, c, s, id, math.MaxInt64, 10)
	if !c.Degraded() {
		t.Fatal("Degraded() = false with Redis hung")
	}
	s.turn(id, "another question")
	c.Invalidate(t.Context(), id)
	checkFresh(t, c, s, id, math.MaxInt64, 10)
	checkFresh(t, c, s, id, 2, 1)
}
