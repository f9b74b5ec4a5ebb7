package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

const testPrefix = "test."

// newCluster starts an in-process kfake broker with the topic of every test, and returns a config
// pointing at it with group timings short enough for unit tests.
func newCluster(t *testing.T, opts ...kfake.Opt) (*kfake.Cluster, Config) {
	t.Helper()
	cfg := Config{TopicPrefix: testPrefix}
	opts = append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(4, cfg.Topic(TopicInbound), DLQ(cfg.Topic(TopicInbound)))}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cfg.Brokers = c.ListenAddrs()
	cfg.ProduceTimeout = 2 * time.Second
	cfg.RetryBackoff = time.Millisecond
	cfg.extra = []kgo.Opt{
		kgo.HeartbeatInterval(100 * time.Millisecond), kgo.FetchMaxWait(200 * time.Millisecond),
		kgo.MetadataMinAge(50 * time.Millisecond), kgo.RetryBackoffFn(func(int) time.Duration { return 50 * time.Millisecond }),
	}
	return c, cfg
}

func newProducer(t *testing.T, cfg Config) *Producer {
	t.Helper()
	p, err := NewProducer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// startConsumer runs a consumer until the test ends (or stop is called) and fails the test if
// Run returns an error.
func startConsumer(t *testing.T, cfg Config, group string, topics []string, h Handler, p *Producer) (stop func()) {
	t.Helper()
	c, err := NewConsumer(cfg, group, topics, h, p, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			c.Close()
		})
	}
	t.Cleanup(stop)
	return stop
}

// collector records handled records, safe for concurrent handlers.
type collector struct {
	mu   sync.Mutex
	recs []Record
	ch   chan struct{}
}

func newCollector() *collector { return &collector{ch: make(chan struct{}, 1)} }

func (c *collector) handle(_ context.Context, r Record) error {
	c.mu.Lock()
	c.recs = append(c.recs, r)
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
	return nil
}

func (c *collector) records() []Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Record(nil), c.recs...)
}

// waitFor polls cond until it holds or the test's patience (10s) runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func publish(t *testing.T, p *Producer, r Record) {
	t.Helper()
	if err := p.Publish(context.Background(), r); err != nil {
		t.Fatalf("Publish %s: %v", r.Key, err)
	}
}

func TestConfigTopicsAndDefaults(t *testing.T) {
	cfg := Config{TopicPrefix: "prod."}
	if got, want := cfg.Topic(TopicInbound), "prod.conversation.inbound"; got != want {
		t.Errorf("Topic = %q, want %q", got, want)
	}
	if got, want := DLQ(cfg.Topic(TopicToolResults)), "prod.tool.results.dlq"; got != want {
		t.Errorf("DLQ = %q, want %q", got, want)
	}
	if got := (Config{}).Topic(TopicMemoryWAL); got != "memory.wal" {
		t.Errorf("zero Config Topic = %q", got)
	}
	d := Config{}.withDefaults()
	if d.ClientID != DefaultClientID || d.DialTimeout != DefaultDialTimeout || d.ProduceTimeout != DefaultProduceTimeout ||
		d.HandleAttempts != DefaultHandleAttempts || d.RetryBackoff != DefaultRetryBackoff {
		t.Errorf("defaults not applied: %+v", d)
	}
	if _, err := NewProducer(Config{}); err == nil {
		t.Error("NewProducer without brokers: want error")
	}
	if _, err := NewProducer(Config{Brokers: []string{"127.0.0.1:1"}, SASL: SASL{Mechanism: "gssapi"}}); err == nil {
		t.Error("NewProducer with unknown SASL mechanism: want error")
	}
	for _, m := range []string{SASLPlain, SASLSCRAMSHA256, "SCRAM-SHA-512"} {
		p, err := NewProducer(Config{Brokers: []string{"127.0.0.1:1"}, SASL: SASL{Mechanism: m, User: "u", Password: "p"}, TLS: true})
		if err != nil {
			t.Errorf("NewProducer with SASL %s: %v", m, err)
			continue
		}
		p.Close()
	}
}

func TestPoisonWrapping(t *testing.T) {
	base := errors.New("bad json")
	if Poison(nil) != nil {
		t.Error("Poison(nil) != nil")
	}
	if !IsPoison(fmt.Errorf("handle: %w", Poison(base))) || !errors.Is(Poison(base), base) {
		t.Error("Poison does not survive wrapping or hides its cause")
	}
	if IsPoison(base) {
		t.Error("plain error reported as poison")
	}
}

func TestRecordRoundTripKeepsKeyValueAndHeaders(t *testing.T) {
	_, cfg := newCluster(t)
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)
	want := Record{
		Topic: topic, Key: []byte("session-1"), Value: []byte(`{"text":"hi"}`),
		Headers: map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "event_id": "e1"},
	}
	publish(t, p, want)

	col := newCollector()
	startConsumer(t, cfg, "g-roundtrip", []string{topic}, col.handle, p)
	waitFor(t, "the record", func() bool { return len(col.records()) == 1 })
	got := col.records()[0]
	got.Partition, got.Offset = 0, 0
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("consumed record (-want +got):\n%s", diff)
	}
}

func TestRecordsOfOneKeyArriveInOrder(t *testing.T) {
	_, cfg := newCluster(t)
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)
	const n, keys = 100, 7
	for i := range n {
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i%keys)), Value: []byte(strconv.Itoa(i))})
	}
	col := newCollector()
	startConsumer(t, cfg, "g-order", []string{topic}, col.handle, p)
	waitFor(t, "all records", func() bool { return len(col.records()) >= n })

	got := map[string][]int{}
	for _, r := range col.records() {
		v, _ := strconv.Atoi(string(r.Value))
		got[string(r.Key)] = append(got[string(r.Key)], v)
	}
	want := map[string][]int{}
	for i := range n {
		k := "s" + strconv.Itoa(i%keys)
		want[k] = append(want[k], i)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("per-key order (-want +got):\n%s", diff)
	}
}

func TestGroupMembersSplitPartitionsAndHandleEachRecordOnce(t *testing.T) {
	_, cfg := newCluster(t)
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)

	var mu sync.Mutex
	assigned := map[int]int{} // member -> partitions currently assigned
	member := func(i int) Config {
		c := cfg
		c.extra = append(append([]kgo.Opt(nil), cfg.extra...),
			kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
				mu.Lock()
				assigned[i] += len(m[topic]) // cooperative: only the newly added partitions
				mu.Unlock()
			}),
			kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
				mu.Lock()
				assigned[i] -= len(m[topic])
				mu.Unlock()
			}))
		return c
	}
	cols := []*collector{newCollector(), newCollector()}
	for i, col := range cols {
		startConsumer(t, member(i), "g-split", []string{topic}, col.handle, p)
	}
	waitFor(t, "both members to own two partitions", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return assigned[0] == 2 && assigned[1] == 2
	})

	const n = 200
	for i := range n {
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i)), Value: []byte(strconv.Itoa(i))})
	}
	total := func() int { return len(cols[0].records()) + len(cols[1].records()) }
	waitFor(t, "all records", func() bool { return total() >= n })
	time.Sleep(100 * time.Millisecond) // a duplicate would show up here

	seen := map[string]int{}
	for i, col := range cols {
		if len(col.records()) == 0 {
			t.Errorf("member %d handled no record", i)
		}
		for _, r := range col.records() {
			seen[string(r.Value)]++
		}
	}
	for i := range n {
		if c := seen[strconv.Itoa(i)]; c != 1 {
			t.Errorf("record %d handled %d times, want 1", i, c)
		}
	}
}

func TestPoisonRecordGoesToDLQAndConsumptionGoesOn(t *testing.T) {
	_, cfg := newCluster(t)
	cfg.HandleAttempts = 3
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)

	var mu sync.Mutex
	attempts := map[string]int{}
	col := newCollector()
	handle := func(ctx context.Context, r Record) error {
		mu.Lock()
		attempts[string(r.Value)]++
		mu.Unlock()
		switch string(r.Value) {
		case "poison":
			return Poison(errors.New("cannot decode"))
		case "flaky-forever":
			return errors.New("downstream keeps failing")
		}
		return col.handle(ctx, r)
	}
	// One key: all three records sit in one partition, so "after" comes after both failures.
	for _, v := range []string{"poison", "flaky-forever", "after"} {
		publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte(v), Headers: map[string]string{"traceparent": "tp-" + v}})
	}
	startConsumer(t, cfg, "g-poison", []string{topic}, handle, p)

	dlq := newCollector()
	startConsumer(t, cfg, "g-dlq-reader", []string{DLQ(topic)}, dlq.handle, p)

	waitFor(t, "the good record", func() bool { return len(col.records()) == 1 })
	waitFor(t, "two dead letters", func() bool { return len(dlq.records()) == 2 })

	mu.Lock()
	if got := attempts["poison"]; got != 1 {
		t.Errorf("poison record handled %d times, want 1 (no retry)", got)
	}
	if got := attempts["flaky-forever"]; got != cfg.HandleAttempts {
		t.Errorf("failing record handled %d times, want %d", got, cfg.HandleAttempts)
	}
	mu.Unlock()

	dl := dlq.records()
	for i, want := range []struct{ value, err string }{
		{"poison", "poison record: cannot decode"},
		{"flaky-forever", "downstream keeps failing"},
	} {
		r := dl[i]
		if string(r.Value) != want.value || string(r.Key) != "s1" {
			t.Errorf("dead letter %d = %q/%q, want s1/%q", i, r.Key, r.Value, want.value)
		}
		h := r.Headers
		if h[HeaderError] != want.err || h[HeaderOriginalTopic] != topic || h[HeaderOriginalPartition] == "" ||
			h[HeaderOriginalOffset] != strconv.Itoa(i) || h["traceparent"] != "tp-"+want.value {
			t.Errorf("dead letter %d headers = %v", i, h)
		}
	}
}

// TestKafkaOutageFailsPublishThenRecovers stops the broker, checks that Publish fails with
// agate.EUnavailable, restarts it on the same port from its data directory, and checks that
// publishing works again and that the group resumes from the offsets committed before it.
func TestKafkaOutageFailsPublishThenRecovers(t *testing.T) {
	dir := t.TempDir()
	c, cfg := newCluster(t, kfake.DataDir(dir))
	cfg.ProduceTimeout = 500 * time.Millisecond
	cfg.DialTimeout = 200 * time.Millisecond
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)

	col := newCollector()
	stop := startConsumer(t, cfg, "g-outage", []string{topic}, col.handle, p)
	for i := range 20 {
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i%3)), Value: []byte(strconv.Itoa(i))})
	}
	waitFor(t, "the first batch", func() bool { return len(col.records()) >= 20 })
	stop() // Run returns after committing what it handled

	port := c.ListenAddrs()[0]
	c.Close()
	err := p.Publish(context.Background(), Record{Topic: topic, Key: []byte("s0"), Value: []byte("lost?")})
	if got := agate.ErrorCode(err); got != agate.EUnavailable {
		t.Fatalf("Publish with the broker down: code %q (%v), want %q", got, err, agate.EUnavailable)
	}

	_, portStr, _ := net.SplitHostPort(port)
	portNum, _ := strconv.Atoi(portStr)
	c2, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(portNum), kfake.DataDir(dir))
	if err != nil {
		t.Fatalf("restart kfake on port %d: %v", portNum, err)
	}
	t.Cleanup(c2.Close)

	// The producer reconnects by itself; retry while its connection notices the new broker.
	waitFor(t, "publishing to work again", func() bool {
		return p.Publish(context.Background(), Record{Topic: topic, Key: []byte("s0"), Value: []byte("20")}) == nil
	})
	for i := 21; i < 40; i++ {
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i%3)), Value: []byte(strconv.Itoa(i))})
	}
	// A new member of the same group resumes from the offsets committed before the outage.
	startConsumer(t, cfg, "g-outage", []string{topic}, col.handle, p)

	seen := func() map[string]int {
		m := map[string]int{}
		for _, r := range col.records() {
			m[string(r.Value)]++
		}
		return m
	}
	waitFor(t, "the second batch", func() bool {
		m := seen()
		for i := range 40 {
			if m[strconv.Itoa(i)] == 0 {
				return false
			}
		}
		return true
	})
	for v, n := range seen() {
		i, err := strconv.Atoi(v)
		if err != nil && v != "lost?" {
			t.Errorf("unexpected record %q", v)
		}
		// The first batch was handled and committed before the outage: it must not come back.
		if err == nil && i < 20 && n != 1 {
			t.Errorf("record %d handled %d times after restart; it was committed", i, n)
		}
	}
}

// TestDeadLetterGoesToTheSinkBeforeTheDLQAndIsCommittedOnlyThen makes the sink fail, stops the
// consumer, and checks that the record was neither published to the DLQ nor committed; a new
// member then gets it again, the sink succeeds, and the DLQ gets it once.
func TestDeadLetterGoesToTheSinkBeforeTheDLQAndIsCommittedOnlyThen(t *testing.T) {
	_, cfg := newCluster(t)
	topic := cfg.Topic(TopicInbound)
	var (
		mu    sync.Mutex
		calls []Record
		fail  = true
	)
	cfg.DeadLetterSink = func(_ context.Context, dl Record) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, dl)
		if fail {
			return errors.New("dlq table unavailable")
		}
		return nil
	}
	sinkCalls := func() int { mu.Lock(); defer mu.Unlock(); return len(calls) }
	p := newProducer(t, cfg)
	publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte("ok")})
	publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte("poison"), Headers: map[string]string{"traceparent": "tp"}})
	var handled []Record
	handle := func(_ context.Context, r Record) error {
		mu.Lock()
		handled = append(handled, r)
		mu.Unlock()
		if string(r.Value) == "poison" {
			return Poison(errors.New("cannot decode"))
		}
		return nil
	}
	stop := startConsumer(t, cfg, "g-sink", []string{topic}, handle, p)
	waitFor(t, "the sink to be retried", func() bool { return sinkCalls() >= 3 })
	stop()

	dlq := newCollector()
	startConsumer(t, cfg, "g-sink-dlq-reader", []string{DLQ(topic)}, dlq.handle, p)
	time.Sleep(300 * time.Millisecond)
	if got := dlq.records(); len(got) != 0 {
		t.Fatalf("dead letter published although the sink failed: %v", got)
	}

	mu.Lock()
	fail = false
	before := len(calls)
	mu.Unlock()
	startConsumer(t, cfg, "g-sink", []string{topic}, handle, p)
	waitFor(t, "the dead letter", func() bool { return len(dlq.records()) == 1 })
	time.Sleep(100 * time.Millisecond)

	mu.Lock()
	defer mu.Unlock()
	if got := len(calls) - before; got != 1 {
		t.Errorf("sink called %d times after it recovered, want 1", got)
	}
	var poison Record
	count := map[string]int{}
	for _, r := range handled {
		count[string(r.Value)]++
		if string(r.Value) == "poison" {
			poison = r
		}
	}
	if diff := cmp.Diff(map[string]int{"ok": 1, "poison": 2}, count); diff != "" {
		t.Errorf("times handled (-want +got):\n%s", diff)
	}
	dl := dlq.records()[0]
	want := Record{Topic: DLQ(topic), Key: []byte("s1"), Value: []byte("poison"), Headers: dl.Headers, Partition: poison.Partition, Offset: poison.Offset}
	for i, got := range calls {
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("sink call %d (-want +got):\n%s", i, diff)
		}
	}
	if dl.Headers[HeaderError] != "poison record: cannot decode" || dl.Headers["traceparent"] != "tp" {
		t.Errorf("dead letter headers = %v", dl.Headers)
	}
}
