package kafka

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// startAsync runs an AsyncConsumer until the test ends (or stop is called) and fails the test if
// Run returns an error. stop returns after Run returned and the consumer was closed.
func startAsync(t *testing.T, cfg Config, group string, topics []string, h AsyncHandler, p *Producer, log *slog.Logger) (stop func()) {
	t.Helper()
	c, err := NewAsyncConsumer(cfg, group, topics, h, p, log)
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

// committedOffset returns the offset group has committed for topic/partition, -1 if none.
func committedOffset(t *testing.T, cfg Config, group, topic string, partition int32) int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	offs, err := kadm.NewClient(cl).FetchOffsets(ctx, group)
	if err != nil {
		t.Fatalf("fetch offsets of %s: %v", group, err)
	}
	o, ok := offs.Lookup(topic, partition)
	if !ok || o.Err != nil {
		return -1
	}
	return o.At
}

// handed is one record an AsyncHandler received.
type handed struct {
	ctx  context.Context
	r    Record
	done func(error)
}

// asyncCollector is an AsyncHandler that keeps what it is handed; finish, when set, decides
// whether to call done(nil) at once.
type asyncCollector struct {
	mu     sync.Mutex
	recs   []handed
	finish func(r Record) bool
}

func (c *asyncCollector) handle(ctx context.Context, r Record, done func(error)) {
	c.mu.Lock()
	c.recs = append(c.recs, handed{ctx, r, done})
	finish := c.finish
	c.mu.Unlock()
	if finish != nil && finish(r) {
		done(nil)
	}
}

func (c *asyncCollector) handed() []handed {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.recs)
}

func (c *asyncCollector) values() []string {
	var vs []string
	for _, h := range c.handed() {
		vs = append(vs, string(h.r.Value))
	}
	return vs
}

func (c *asyncCollector) count() int { return len(c.handed()) }

// logCapture is a slog.Handler that keeps the messages logged.
type logCapture struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCapture) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	l.mu.Unlock()
	return nil
}
func (l *logCapture) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCapture) WithGroup(string) slog.Handler      { return l }

func (l *logCapture) logged(prefix string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.msgs, func(m string) bool { return strings.HasPrefix(m, prefix) })
}

var discard = slog.New(slog.DiscardHandler)

func TestAsyncHandsRecordsOverInOffsetOrderPerPartition(t *testing.T) {
	_, cfg := newCluster(t)
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)
	const n, keys = 120, 9
	for i := range n {
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i%keys)), Value: []byte(strconv.Itoa(i))})
	}
	// Finish in random order, later, from other goroutines: dispatch order must not depend on it.
	col := &asyncCollector{}
	handle := func(ctx context.Context, r Record, done func(error)) {
		col.handle(ctx, r, done)
		time.AfterFunc(time.Duration(rand.IntN(20))*time.Millisecond, func() { done(nil) })
	}
	startAsync(t, cfg, "g-async-order", []string{topic}, handle, p, discard)
	waitFor(t, "all records", func() bool { return col.count() >= n })

	offsets := map[int32][]int64{}
	perKey := map[string][]int{}
	for _, h := range col.handed() {
		offsets[h.r.Partition] = append(offsets[h.r.Partition], h.r.Offset)
		v, _ := strconv.Atoi(string(h.r.Value))
		perKey[string(h.r.Key)] = append(perKey[string(h.r.Key)], v)
	}
	for part, offs := range offsets {
		if !slices.IsSorted(offs) || len(slices.Compact(slices.Clone(offs))) != len(offs) {
			t.Errorf("partition %d handed over in order %v, want strictly increasing offsets", part, offs)
		}
	}
	want := map[string][]int{}
	for i := range n {
		k := "s" + strconv.Itoa(i%keys)
		want[k] = append(want[k], i)
	}
	if diff := cmp.Diff(want, perKey); diff != "" {
		t.Errorf("per-key order (-want +got):\n%s", diff)
	}
}

func TestAsyncSlowRecordDoesNotHoldBackLaterRecordsOrOtherPartitions(t *testing.T) {
	_, cfg := newCluster(t)
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)

	publish(t, p, Record{Topic: topic, Key: []byte("s0"), Value: []byte("slow")})
	var want []string
	for i := range 20 {
		v := strconv.Itoa(i)
		want = append(want, v)
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i%5)), Value: []byte(v)}) // s0 shares the slow record's partition
	}
	col := &asyncCollector{finish: func(r Record) bool { return string(r.Value) != "slow" }}
	startAsync(t, cfg, "g-async-slow", []string{topic}, col.handle, p, discard)

	waitFor(t, "every record but the slow one to be handed over", func() bool { return col.count() == 21 })
	var (
		got  []string
		slow handed
	)
	for _, h := range col.handed() {
		if string(h.r.Value) == "slow" {
			slow = h
			continue
		}
		got = append(got, string(h.r.Value))
	}
	samePartition := 0
	for _, h := range col.handed() {
		if h.r.Partition == slow.r.Partition && h.r.Offset > slow.r.Offset {
			samePartition++
		}
	}
	slices.SortFunc(got, func(a, b string) int { x, _ := strconv.Atoi(a); y, _ := strconv.Atoi(b); return x - y })
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("records handed over while the slow one runs (-want +got):\n%s", diff)
	}
	if samePartition < 4 {
		t.Errorf("%d later records of the slow record's partition handed over, want >= 4 (all of key s0)", samePartition)
	}
	// The slow record finishes last; nothing breaks.
	slow.done(nil)
}

func TestAsyncCommitsOnlyTheFinishedPrefixOfAPartition(t *testing.T) {
	_, cfg := newCluster(t)
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)
	for i := range 4 { // one key: offsets 0..3 of one partition
		publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte(strconv.Itoa(i))})
	}
	// Member A finishes 0 and 2; 1 and 3 keep running when it stops.
	a := &asyncCollector{finish: func(r Record) bool { return string(r.Value) == "0" || string(r.Value) == "2" }}
	stopA := startAsync(t, cfg, "g-async-prefix", []string{topic}, a.handle, p, discard)
	waitFor(t, "member A to be handed all four", func() bool { return a.count() == 4 })
	stopA()
	part := a.handed()[0].r.Partition
	if got := committedOffset(t, cfg, "g-async-prefix", topic, part); got != 1 {
		t.Errorf("committed offset after A stopped = %d, want 1 (the first unfinished record)", got)
	}
	for _, h := range a.handed() {
		if h.ctx.Err() == nil {
			t.Errorf("record %s: handler context still live after Run returned", h.r.Value)
		}
	}

	// Only offset 0 was committed: 1 is the first unfinished, so 1, 2 and 3 come again.
	b := &asyncCollector{finish: func(Record) bool { return true }}
	stopB := startAsync(t, cfg, "g-async-prefix", []string{topic}, b.handle, p, discard)
	waitFor(t, "member B to be handed the redelivered records", func() bool { return b.count() >= 3 })
	time.Sleep(200 * time.Millisecond) // a duplicate would show up here
	if diff := cmp.Diff([]string{"1", "2", "3"}, b.values()); diff != "" {
		t.Errorf("redelivered records (-want +got):\n%s", diff)
	}
	stopB()

	// B finished and committed all of them: a third member gets nothing old.
	publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte("4")})
	c := &asyncCollector{finish: func(Record) bool { return true }}
	startAsync(t, cfg, "g-async-prefix", []string{topic}, c.handle, p, discard)
	waitFor(t, "member C to get the new record", func() bool { return c.count() >= 1 })
	time.Sleep(100 * time.Millisecond)
	if diff := cmp.Diff([]string{"4"}, c.values()); diff != "" {
		t.Errorf("records after B committed (-want +got):\n%s", diff)
	}
}

func TestAsyncFailedRecordGoesToSinkAndDLQAndIsCommitted(t *testing.T) {
	_, cfg := newCluster(t)
	topic := cfg.Topic(TopicInbound)
	var (
		mu   sync.Mutex
		sunk []Record
	)
	cfg.DeadLetterSink = func(_ context.Context, dl Record) error {
		mu.Lock()
		sunk = append(sunk, dl)
		mu.Unlock()
		return nil
	}
	p := newProducer(t, cfg)
	publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte("bad"), Headers: map[string]string{"traceparent": "tp"}})
	publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte("good")})

	col := &asyncCollector{}
	handle := func(ctx context.Context, r Record, done func(error)) {
		col.handle(ctx, r, nil)
		if string(r.Value) == "bad" {
			go done(errors.New("model refused")) // done from another goroutine, after handle returned
			return
		}
		done(nil)
	}
	stop := startAsync(t, cfg, "g-async-dlq", []string{topic}, handle, p, discard)

	dlq := newCollector()
	startConsumer(t, cfg, "g-async-dlq-reader", []string{DLQ(topic)}, dlq.handle, p)
	waitFor(t, "the dead letter", func() bool { return len(dlq.records()) == 1 })

	bad := col.handed()[0].r
	dl := dlq.records()[0]
	if string(dl.Value) != "bad" || string(dl.Key) != "s1" || dl.Headers[HeaderError] != "model refused" ||
		dl.Headers[HeaderOriginalTopic] != topic || dl.Headers[HeaderOriginalOffset] != strconv.FormatInt(bad.Offset, 10) ||
		dl.Headers[HeaderOriginalPartition] != strconv.Itoa(int(bad.Partition)) || dl.Headers["traceparent"] != "tp" {
		t.Errorf("dead letter = %+v", dl)
	}
	mu.Lock()
	gotSunk := slices.Clone(sunk)
	mu.Unlock()
	if len(gotSunk) != 1 {
		t.Fatalf("sink called %d times, want 1", len(gotSunk))
	}
	want := Record{Topic: DLQ(topic), Key: []byte("s1"), Value: []byte("bad"), Headers: dl.Headers, Partition: bad.Partition, Offset: bad.Offset}
	if diff := cmp.Diff(want, gotSunk[0]); diff != "" {
		t.Errorf("record given to the sink (-want +got):\n%s", diff)
	}

	// Both records get committed (by the autocommit of marks, while A runs).
	waitFor(t, "both records to be committed", func() bool {
		return committedOffset(t, cfg, "g-async-dlq", topic, bad.Partition) == bad.Offset+2
	})
	stop()
	publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte("next")})
	next := &asyncCollector{finish: func(Record) bool { return true }}
	startAsync(t, cfg, "g-async-dlq", []string{topic}, next.handle, p, discard)
	waitFor(t, "the next record", func() bool { return next.count() >= 1 })
	time.Sleep(100 * time.Millisecond)
	if diff := cmp.Diff([]string{"next"}, next.values()); diff != "" {
		t.Errorf("records after the dead letter was committed (-want +got):\n%s", diff)
	}
}

func TestAsyncMaxInFlightBoundsRecordsInFlight(t *testing.T) {
	_, cfg := newCluster(t)
	cfg.MaxInFlight = 3
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)
	const n = 12
	for i := range n {
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i)), Value: []byte(strconv.Itoa(i))})
	}
	var (
		mu               sync.Mutex
		running, maxSeen int
	)
	col := &asyncCollector{}
	handle := func(ctx context.Context, r Record, done func(error)) {
		mu.Lock()
		running++
		maxSeen = max(maxSeen, running)
		mu.Unlock()
		var once sync.Once
		col.handle(ctx, r, func(err error) {
			once.Do(func() {
				mu.Lock()
				running--
				mu.Unlock()
				done(err)
			})
		})
	}
	startAsync(t, cfg, "g-async-max", []string{topic}, handle, p, discard)

	waitFor(t, "three records in flight", func() bool { return col.count() == 3 })
	time.Sleep(300 * time.Millisecond) // a fourth would be handed over here
	if got := col.count(); got != 3 {
		t.Fatalf("%d records handed over with none finished, want MaxInFlight = 3", got)
	}
	col.handed()[1].done(nil) // any slot frees room for one more
	waitFor(t, "a fourth record", func() bool { return col.count() == 4 })

	// Finish everything as it comes: all records get through, never more than 3 at once.
	waitFor(t, "all records", func() bool {
		hs := col.handed()
		for _, h := range hs {
			h.done(nil)
		}
		return len(hs) == n
	})
	mu.Lock()
	defer mu.Unlock()
	if maxSeen > 3 {
		t.Errorf("%d records in flight at once, want <= MaxInFlight = 3", maxSeen)
	}
}

func TestAsyncRevokeWaitsForRecordsInFlightSoNoneIsHandledTwice(t *testing.T) {
	_, cfg := newCluster(t)
	cfg.RevokeWait = 10 * time.Second
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)
	const n = 40
	for i := range n / 2 {
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i)), Value: []byte(strconv.Itoa(i))})
	}

	// A holds the first half in flight until its partitions are being revoked.
	logs := &logCapture{}
	a := &asyncCollector{finish: func(r Record) bool { v, _ := strconv.Atoi(string(r.Value)); return v >= n/2 }}
	startAsync(t, cfg, "g-async-revoke", []string{topic}, a.handle, p, slog.New(logs))
	waitFor(t, "member A to hold the first half", func() bool { return a.count() == n/2 })

	b := &asyncCollector{finish: func(Record) bool { return true }}
	startAsync(t, cfg, "g-async-revoke", []string{topic}, b.handle, p, discard)
	waitFor(t, "member A's revoke to wait", func() bool { return logs.logged("kafka partitions revoked; waiting") })
	time.Sleep(100 * time.Millisecond) // the rebalance is held while A's records run
	if b.count() != 0 {
		t.Errorf("member B was handed %v while A's revoke waits", b.values())
	}
	for _, h := range a.handed() {
		h.done(nil)
	}

	for i := n / 2; i < n; i++ {
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i)), Value: []byte(strconv.Itoa(i))})
	}
	seen := func() map[string]int {
		m := map[string]int{}
		for _, c := range []*asyncCollector{a, b} {
			for _, v := range c.values() {
				m[v]++
			}
		}
		return m
	}
	waitFor(t, "every record", func() bool { return len(seen()) == n })
	time.Sleep(200 * time.Millisecond) // a redelivery would show up here
	for i := range n / 2 {
		if c := seen()[strconv.Itoa(i)]; c != 1 {
			t.Errorf("record %d handled %d times, want 1: it finished within RevokeWait", i, c)
		}
	}
	if b.count() == 0 {
		t.Error("member B got no partition")
	}
	if logs.logged("kafka partitions revoked with records still in flight") {
		t.Error("A gave up waiting although its records finished within RevokeWait")
	}
}

func TestAsyncRevokeGivesUpAfterRevokeWaitAndTheNewOwnerGetsTheRecords(t *testing.T) {
	_, cfg := newCluster(t)
	cfg.RevokeWait = 300 * time.Millisecond
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)
	const n = 16
	for i := range n {
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i)), Value: []byte(strconv.Itoa(i))})
	}
	logs := &logCapture{}
	a := &asyncCollector{} // never finishes on its own
	startAsync(t, cfg, "g-async-giveup", []string{topic}, a.handle, p, slog.New(logs))
	waitFor(t, "member A to hold every record", func() bool { return a.count() == n })

	b := &asyncCollector{finish: func(Record) bool { return true }}
	startAsync(t, cfg, "g-async-giveup", []string{topic}, b.handle, p, discard)
	waitFor(t, "member B to get the records A gave up", func() bool { return b.count() > 0 })
	if !logs.logged("kafka partitions revoked with records still in flight") {
		t.Error("no warning about the records A gave up")
	}

	// A's records of revoked partitions have a canceled context and go to B; the others stay
	// with A. A late done for a revoked record commits nothing and does not panic.
	var revoked []string
	for _, h := range a.handed() {
		if h.ctx.Err() != nil {
			revoked = append(revoked, string(h.r.Value))
			h.done(nil)
			h.done(errors.New("late and twice"))
		}
	}
	if len(revoked) == 0 {
		t.Fatal("no record of A was revoked")
	}
	waitFor(t, "member B to get every revoked record", func() bool { return b.count() >= len(revoked) })
	slices.Sort(revoked)
	got := b.values()
	slices.Sort(got)
	if diff := cmp.Diff(revoked, got); diff != "" {
		t.Errorf("records B got (-A's revoked +B's):\n%s", diff)
	}
}

func TestAsyncDoneAfterRunReturnedIsHarmless(t *testing.T) {
	_, cfg := newCluster(t)
	var sinks int
	var mu sync.Mutex
	cfg.DeadLetterSink = func(context.Context, Record) error { mu.Lock(); sinks++; mu.Unlock(); return nil }
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)
	publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte("0")})
	publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte("1")})

	a := &asyncCollector{}
	c, err := NewAsyncConsumer(cfg, "g-async-late", []string{topic}, a.handle, p, discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	waitFor(t, "both records", func() bool { return a.count() == 2 })
	cancel()
	if err := <-ran; err != nil {
		t.Errorf("Run: %v", err)
	}
	a.handed()[0].done(nil) // after Run returned, before Close (which commits on leaving the group)
	c.Close()
	a.handed()[1].done(errors.New("too late")) // after Close

	b := &asyncCollector{finish: func(Record) bool { return true }}
	startAsync(t, cfg, "g-async-late", []string{topic}, b.handle, p, discard)
	waitFor(t, "both records again", func() bool { return b.count() == 2 })
	mu.Lock()
	defer mu.Unlock()
	if sinks != 0 {
		t.Errorf("sink called %d times by a done after Close, want 0", sinks)
	}
}

func TestNewAsyncConsumerRejectsMissingArguments(t *testing.T) {
	cfg := Config{Brokers: []string{"127.0.0.1:1"}}
	p, err := NewProducer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	h := func(context.Context, Record, func(error)) {}
	for name, mk := range map[string]func() (*AsyncConsumer, error){
		"group":    func() (*AsyncConsumer, error) { return NewAsyncConsumer(cfg, "", []string{"t"}, h, p, nil) },
		"topics":   func() (*AsyncConsumer, error) { return NewAsyncConsumer(cfg, "g", nil, h, p, nil) },
		"handler":  func() (*AsyncConsumer, error) { return NewAsyncConsumer(cfg, "g", []string{"t"}, nil, p, nil) },
		"producer": func() (*AsyncConsumer, error) { return NewAsyncConsumer(cfg, "g", []string{"t"}, h, nil, nil) },
		"brokers":  func() (*AsyncConsumer, error) { return NewAsyncConsumer(Config{}, "g", []string{"t"}, h, p, nil) },
	} {
		if c, err := mk(); err == nil {
			c.Close()
			t.Errorf("without %s: want error", name)
		}
	}
}
