package bus_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/bus"
	"github.com/agate-gw/agate/kafka"
	"github.com/agate-gw/agate/sqlite"
	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

var quiet = slog.New(slog.DiscardHandler)

func openStore(t *testing.T, origin string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "agate.db"),
		sqlite.Config{Relaxed: true, Bus: true, Origin: origin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func kafkaConfig(brokers []string) kafka.Config {
	return kafka.Config{
		Brokers: brokers, TopicPrefix: "t.",
		ProduceTimeout: 500 * time.Millisecond, DialTimeout: 200 * time.Millisecond,
	}
}

// newProducer creates the gateway's topics and returns a producer.
func newProducer(t *testing.T, cfg kafka.Config) *kafka.Producer {
	t.Helper()
	if err := kafka.EnsureTopics(context.Background(), cfg, 4, cfg.Topic(agate.TopicInbound), cfg.Topic(agate.TopicOutbound)); err != nil {
		t.Fatal(err)
	}
	p, err := kafka.NewProducer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// run runs fn until the test ends.
func run(t *testing.T, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
}

// reader collects every record of the gateway's topics, from the start.
type reader struct {
	mu   sync.Mutex
	recs []kgo.Record
}

func read(t *testing.T, brokers []string, topics ...string) *reader {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond),
		kgo.RetryBackoffFn(func(int) time.Duration { return 50 * time.Millisecond }))
	if err != nil {
		t.Fatal(err)
	}
	r := &reader{}
	run(t, func(ctx context.Context) error {
		defer cl.Close()
		for ctx.Err() == nil {
			cl.PollFetches(ctx).EachRecord(func(rec *kgo.Record) {
				r.mu.Lock()
				r.recs = append(r.recs, *rec)
				r.mu.Unlock()
			})
		}
		return nil
	})
	return r
}

func (r *reader) records() []kgo.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]kgo.Record(nil), r.recs...)
}

func waitFor(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// id names a relayed record: its topic and the id of its event (or turn, which has the id
// of its user event).
type id struct {
	topic string
	id    uuid.UUID
}

// accept stores n messages spread over sessions, each answered by a started and a final
// event, and returns the ids of every event and turn written.
func accept(t *testing.T, s *sqlite.Store, sessions []uuid.UUID, from, n int) []id {
	t.Helper()
	ctx := context.Background()
	var ids []id
	in, out := "t."+agate.TopicInbound, "t."+agate.TopicOutbound
	for i := from; i < from+n; i++ {
		acc, err := s.Accept(ctx, agate.Inbound{Tenant: "t", SessionID: sessions[i%len(sessions)], Message: "m" + strconv.Itoa(i)})
		if err != nil {
			t.Fatal(err)
		}
		evs, err := s.Append(ctx, &acc.Turn,
			agate.Event{SessionID: acc.Turn.SessionID, Role: agate.RoleAssistant, Type: agate.TypeStarted},
			agate.Event{SessionID: acc.Turn.SessionID, Role: agate.RoleAssistant, Type: agate.TypeFinal, Message: "r" + strconv.Itoa(i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id{out, acc.Event.EventID}, id{in, acc.Turn.ID}, id{out, evs[0].EventID}, id{out, evs[1].EventID})
	}
	return ids
}

// seen dedupes records the way a consumer does, by event id (turn id on the inbound
// topic), checks that each session's events come in seq order, and returns the ids.
func seen(t *testing.T, recs []kgo.Record) map[id]int {
	t.Helper()
	ids := map[id]int{}
	lastSeq := map[string]int64{}
	for _, r := range recs {
		var v struct {
			EventID uuid.UUID `json:"event_id"`
			TurnID  uuid.UUID `json:"turn_id"`
			Seq     int64     `json:"seq"`
		}
		if err := json.Unmarshal(r.Value, &v); err != nil {
			t.Fatalf("record on %s: %v", r.Topic, err)
		}
		k := id{r.Topic, v.EventID}
		if r.Topic == "t."+agate.TopicInbound {
			k.id = v.TurnID
		}
		ids[k]++
		if ids[k] > 1 || r.Topic != "t."+agate.TopicOutbound {
			continue
		}
		if v.Seq <= lastSeq[string(r.Key)] {
			t.Errorf("session %s: seq %d relayed after seq %d", r.Key, v.Seq, lastSeq[string(r.Key)])
		}
		lastSeq[string(r.Key)] = v.Seq
	}
	return ids
}

// TestRelayWaitsOutKafkaOutage stops the broker while messages are accepted: they wait in
// the outbox and are relayed when it comes back, each seen once after dedupe, in order per
// session.
func TestRelayWaitsOutKafkaOutage(t *testing.T) {
	dir := t.TempDir()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DataDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	brokers := c.ListenAddrs()
	cfg := kafkaConfig(brokers)
	store := openStore(t, "a")
	relay := bus.NewRelay(store, newProducer(t, cfg), bus.RelayConfig{
		Holder: "a", Topic: cfg.Topic, Poll: 5 * time.Millisecond, Lease: 300 * time.Millisecond, Max: 100 * time.Millisecond,
	}, quiet, nil)
	run(t, relay.Run)
	sessions := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}

	want := accept(t, store, sessions, 0, 10)
	waitFor(t, "the outbox to empty", 10*time.Second, func() bool {
		recs, err := store.Unsent(context.Background(), 1)
		return err == nil && len(recs) == 0
	})

	c.Close()
	want = append(want, accept(t, store, sessions, 10, 10)...)
	waitFor(t, "the relay to report the outage", 10*time.Second, func() bool { return relay.Err() != nil })
	if recs, err := store.Unsent(context.Background(), 100); err != nil || len(recs) != 40 {
		t.Fatalf("outbox during the outage: %d records (%v), want the 40 written since", len(recs), err)
	}

	_, portStr, _ := net.SplitHostPort(brokers[0])
	port, _ := strconv.Atoi(portStr)
	c2, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dir))
	if err != nil {
		t.Fatalf("restart kfake on port %d: %v", port, err)
	}
	t.Cleanup(c2.Close)
	waitFor(t, "the outbox to empty after the outage", 30*time.Second, func() bool {
		recs, err := store.Unsent(context.Background(), 1)
		return err == nil && len(recs) == 0
	})
	// The relay clears its error once the attempt that emptied the outbox returns.
	waitFor(t, "the relay to report no error", 5*time.Second, func() bool { return relay.Err() == nil })

	r := read(t, brokers, "t."+agate.TopicInbound, "t."+agate.TopicOutbound)
	waitFor(t, "every record", 10*time.Second, func() bool { return len(seen(t, r.records())) >= len(want) })
	got := seen(t, r.records())
	for _, k := range want {
		if got[k] == 0 {
			t.Errorf("record %v never relayed", k)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d distinct records relayed, want %d", len(got), len(want))
	}
}

// TestOneRelayAtATime runs two relays on one store: one holds the lease, so every record
// is published once and in order; when it stops it gives the lease up and the other takes
// over without waiting for it to expire.
func TestOneRelayAtATime(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cfg := kafkaConfig(c.ListenAddrs())
	store := openStore(t, "a")
	prod := newProducer(t, cfg)
	relayCfg := func(holder string) bus.RelayConfig {
		return bus.RelayConfig{Holder: holder, Topic: cfg.Topic, Poll: 2 * time.Millisecond, Lease: 6 * time.Second}
	}
	ctxA, stopA := context.WithCancel(context.Background())
	doneA := make(chan error, 1)
	go func() { doneA <- bus.NewRelay(store, prod, relayCfg("a"), quiet, nil).Run(ctxA) }()
	time.Sleep(50 * time.Millisecond) // a leads
	run(t, bus.NewRelay(store, prod, relayCfg("b"), quiet, nil).Run)

	sessions := []uuid.UUID{uuid.New(), uuid.New()}
	want := accept(t, store, sessions, 0, 25)
	waitFor(t, "the outbox to empty", 10*time.Second, func() bool {
		recs, err := store.Unsent(context.Background(), 1)
		return err == nil && len(recs) == 0
	})
	stopA()
	<-doneA
	r := read(t, c.ListenAddrs(), "t."+agate.TopicInbound, "t."+agate.TopicOutbound)
	waitFor(t, "the first records", 10*time.Second, func() bool { return len(r.records()) >= len(want) })
	want = append(want, accept(t, store, sessions, 25, 5)...)
	// b tries the lease every 2s (a third of it) and takes it at its next try; had a kept it,
	// b would wait at least 4s more (a renewed it at most 2s before it stopped).
	waitFor(t, "b to relay before a's lease would have expired", 3500*time.Millisecond, func() bool { return len(r.records()) >= len(want) })
	time.Sleep(100 * time.Millisecond) // room for duplicates to show
	got := seen(t, r.records())
	for k, n := range got {
		if n != 1 {
			t.Errorf("record %v published %d times", k, n)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d records published, want %d", len(got), len(want))
	}
}

// TestRefusedRecordGoesToTheDeadLettersAndTheRestIsRelayed writes a record larger than
// Kafka takes: it is moved to the dead letters instead of holding up the outbox.
func TestRefusedRecordGoesToTheDeadLettersAndTheRestIsRelayed(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cfg := kafkaConfig(c.ListenAddrs())
	store := openStore(t, "a")
	run(t, bus.NewRelay(store, newProducer(t, cfg), bus.RelayConfig{Holder: "a", Topic: cfg.Topic, Poll: 5 * time.Millisecond}, quiet, nil).Run)

	ctx := context.Background()
	huge, err := store.Accept(ctx, agate.Inbound{Tenant: "t", Message: strings.Repeat("x", 2<<20)})
	if err != nil {
		t.Fatal(err)
	}
	want := accept(t, store, []uuid.UUID{huge.Turn.SessionID}, 0, 3)
	waitFor(t, "the outbox to empty", 10*time.Second, func() bool {
		recs, err := store.Unsent(ctx, 1)
		return err == nil && len(recs) == 0
	})
	dead, err := store.DeadLetters(ctx, "", 0, 10)
	if err != nil || len(dead) != 1 {
		t.Fatalf("dead letters: %d (%v), want the one oversized record", len(dead), err)
	}
	if d := dead[0]; d.Topic != "t."+agate.TopicOutbound || len(d.Payload) < 2<<20 || d.Error == "" {
		t.Errorf("dead letter: topic %s, %d bytes, error %q", d.Topic, len(d.Payload), d.Error)
	}
	r := read(t, c.ListenAddrs(), "t."+agate.TopicInbound, "t."+agate.TopicOutbound)
	waitFor(t, "the other records", 10*time.Second, func() bool { return len(seen(t, r.records())) >= len(want)+1 })
	got := seen(t, r.records())
	for _, k := range want {
		if got[k] != 1 {
			t.Errorf("record %v relayed %d times, want once", k, got[k])
		}
	}
	if got[id{"t." + agate.TopicInbound, huge.Turn.ID}] != 1 {
		t.Errorf("the turn of the oversized message was relayed %d times, want once", got[id{"t." + agate.TopicInbound, huge.Turn.ID}])
	}
}
