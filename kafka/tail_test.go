package kafka

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// startTail runs a Tail until the test ends and waits until it is Ready.
func startTail(t *testing.T, cfg Config, topics []string, h func(context.Context, Record) error, refresh time.Duration) *Tail {
	t.Helper()
	tl, err := NewTail(cfg, topics, h, discard)
	if err != nil {
		t.Fatal(err)
	}
	if refresh > 0 {
		tl.refresh = refresh
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		tl.Close()
	})
	select {
	case <-tl.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("tail not ready")
	}
	return tl
}

func TestTailDeliversRecordsPublishedAfterReadyToEveryTail(t *testing.T) {
	_, cfg := newCluster(t)
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicOutbound)
	if err := EnsureTopics(context.Background(), cfg, 4, topic); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i%3)), Value: []byte("before-" + strconv.Itoa(i))})
	}
	cols := []*collector{newCollector(), newCollector()}
	for _, col := range cols {
		startTail(t, cfg, []string{topic}, col.handle, 0)
	}
	const n, keys = 60, 7
	for i := range n {
		publish(t, p, Record{Topic: topic, Key: []byte("s" + strconv.Itoa(i%keys)), Value: []byte(strconv.Itoa(i))})
	}
	want := map[string][]string{}
	for i := range n {
		k := "s" + strconv.Itoa(i%keys)
		want[k] = append(want[k], strconv.Itoa(i))
	}
	for i, col := range cols {
		waitFor(t, "every record at tail "+strconv.Itoa(i), func() bool { return len(col.records()) >= n })
	}
	time.Sleep(100 * time.Millisecond) // a duplicate would show up here
	for i, col := range cols {
		got := map[string][]string{}
		offsets := map[int32][]int64{}
		for _, r := range col.records() {
			got[string(r.Key)] = append(got[string(r.Key)], string(r.Value))
			offsets[r.Partition] = append(offsets[r.Partition], r.Offset)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("tail %d: records per key (-want +got):\n%s", i, diff)
		}
		for part, offs := range offsets {
			if !slices.IsSorted(offs) {
				t.Errorf("tail %d: partition %d out of order: %v", i, part, offs)
			}
		}
	}
}

func TestTailHandlerErrorGoesToTheSinkOnce(t *testing.T) {
	_, cfg := newCluster(t)
	topic := cfg.Topic(TopicInbound)
	var (
		mu   sync.Mutex
		sunk []Record
	)
	cfg.DeadLetterSink = func(_ context.Context, dl Record) error {
		mu.Lock()
		defer mu.Unlock()
		sunk = append(sunk, dl)
		return errors.New("the sink fails too: logged, not retried")
	}
	p := newProducer(t, cfg)
	col := newCollector()
	var calls sync.Map
	handle := func(ctx context.Context, r Record) error {
		n, _ := calls.LoadOrStore(string(r.Value), new(int))
		*n.(*int)++
		if string(r.Value) == "bad" {
			return errors.New("no subscriber")
		}
		return col.handle(ctx, r)
	}
	startTail(t, cfg, []string{topic}, handle, 0)
	publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte("bad")})
	publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte("after")})
	waitFor(t, "the record after the failure", func() bool { return len(col.records()) == 1 })
	time.Sleep(100 * time.Millisecond)

	if n, _ := calls.Load("bad"); *n.(*int) != 1 {
		t.Errorf("failing record handled %d times, want 1", *n.(*int))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sunk) != 1 {
		t.Fatalf("sink called %d times, want 1", len(sunk))
	}
	dl := sunk[0]
	if dl.Topic != DLQ(topic) || string(dl.Value) != "bad" || dl.Headers[HeaderError] != "no subscriber" ||
		dl.Headers[HeaderOriginalTopic] != topic || dl.Offset != col.records()[0].Offset-1 || dl.Partition != col.records()[0].Partition {
		t.Errorf("record given to the sink = %+v", dl)
	}
	if ends := endOffsets(t, cfg, DLQ(topic)); ends != 0 {
		t.Errorf("%d records in the DLQ topic, want 0: a tail never publishes dead letters", ends)
	}
}

// endOffsets returns the sum of the end offsets of topic's partitions.
func endOffsets(t *testing.T, cfg Config, topic string) int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	listed, err := kadm.NewClient(cl).ListEndOffsets(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	listed.Each(func(o kadm.ListedOffset) { sum += max(o.Offset, 0) })
	return sum
}

func TestTailPicksUpPartitionsAddedLater(t *testing.T) {
	_, cfg := newCluster(t)
	topic := cfg.Topic(TopicInbound) // 4 partitions
	col := newCollector()
	startTail(t, cfg, []string{topic, cfg.Topic("created.later")}, col.handle, 50*time.Millisecond)

	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx := context.Background()
	if _, err := adm.CreatePartitions(ctx, 2, topic); err != nil {
		t.Fatal(err)
	}
	if err := EnsureTopics(ctx, cfg, 1, cfg.Topic("created.later")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new partitions to take records", func() bool {
		return cl.ProduceSync(ctx,
			&kgo.Record{Topic: topic, Partition: 5, Value: []byte("p5")},
			&kgo.Record{Topic: cfg.Topic("created.later"), Partition: 0, Value: []byte("new topic")},
		).FirstErr() == nil
	})
	waitFor(t, "records of the new partitions", func() bool {
		var vs []string
		for _, r := range col.records() {
			vs = append(vs, string(r.Value))
		}
		return slices.Contains(vs, "p5") && slices.Contains(vs, "new topic")
	})
}

func TestTailContinuesAfterBrokerRestart(t *testing.T) {
	dir := t.TempDir()
	c, cfg := newCluster(t, kfake.DataDir(dir))
	cfg.ProduceTimeout = 500 * time.Millisecond
	cfg.DialTimeout = 200 * time.Millisecond
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)
	col := newCollector()
	startTail(t, cfg, []string{topic}, col.handle, 0)
	publish(t, p, Record{Topic: topic, Key: []byte("s1"), Value: []byte("before outage")})
	waitFor(t, "the first record", func() bool { return len(col.records()) == 1 })

	port := c.ListenAddrs()[0]
	c.Close()
	_, portStr, _ := net.SplitHostPort(port)
	portNum, _ := strconv.Atoi(portStr)
	c2, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(portNum), kfake.DataDir(dir))
	if err != nil {
		t.Fatalf("restart kfake on port %d: %v", portNum, err)
	}
	t.Cleanup(c2.Close)
	waitFor(t, "publishing to work again", func() bool {
		return p.Publish(context.Background(), Record{Topic: topic, Key: []byte("s1"), Value: []byte("after outage")}) == nil
	})
	waitFor(t, "the record published after the restart", func() bool {
		rs := col.records()
		return len(rs) >= 2 && string(rs[len(rs)-1].Value) == "after outage"
	})
	for _, r := range col.records() {
		if string(r.Value) == "before outage" && r.Offset != 0 {
			t.Errorf("record delivered again after the restart at offset %d", r.Offset)
		}
	}
	if n := len(col.records()); n > 2 {
		var vs []string
		for _, r := range col.records() {
			vs = append(vs, string(r.Value))
		}
		t.Errorf("records = %q, want the two published (a failed publish may have stored a duplicate of the second)", vs)
	}
}

func TestTailIsNotReadyWhileTheClusterIsUnreachable(t *testing.T) {
	cfg := Config{Brokers: []string{"127.0.0.1:1"}, DialTimeout: 50 * time.Millisecond, ProduceTimeout: 200 * time.Millisecond, RetryBackoff: 10 * time.Millisecond}
	tl, err := NewTail(cfg, []string{"t"}, func(context.Context, Record) error { return nil }, discard)
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tl.Run(ctx) }()
	select {
	case <-tl.Ready():
		t.Fatal("Ready closed although no offset could be listed")
	case <-time.After(500 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := NewTail(cfg, nil, func(context.Context, Record) error { return nil }, nil); err == nil {
		t.Error("NewTail without topics: want error")
	}
	if _, err := NewTail(cfg, []string{"t"}, nil, nil); err == nil {
		t.Error("NewTail without handler: want error")
	}
}
