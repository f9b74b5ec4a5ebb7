package kafka

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// AsyncHandler starts handling r and returns promptly; it must call done exactly once when the
// work is finished. done(nil) lets the record be committed; done(err) sends it to the
// dead-letter path first (Config.DeadLetterSink, then DLQ(r.Topic)), then commits it. done may
// be called from any goroutine, also from within the handler; a second call is ignored.
//
// ctx is canceled once this consumer will no longer commit r: Run's context ended, or r's
// partition was lost, or revoked before r finished. The record is then redelivered (to another
// member or after a restart), so work still going on for it may be abandoned.
type AsyncHandler func(ctx context.Context, r Record, done func(error))

// AsyncConsumer consumes topics as a member of a consumer group, for work that lasts long (an LLM
// turn takes seconds to minutes): the handler only starts the work, and many records are in
// flight at once, across and within partitions. Delivery is at-least-once.
//
// The handler is called from the poll loop, one record at a time, in offset order per partition,
// so a handler that queues work per key keeps each key's order. At most Config.MaxInFlight
// records are in flight: the loop polls only as many records as there are free slots and waits
// for a slot before polling again. It holds nothing while it waits, so the wait never delays a
// rebalance.
//
// Per partition only the contiguous prefix of finished records is committed: a finished record
// at offset 7 is not committed while offset 5 is still running, so a crash or a stop redelivers
// every record from the first unfinished one on, including finished records after it.
//
// When a rebalance revokes partitions, the consumer waits up to Config.RevokeWait for their
// records in flight, commits their finished prefix and then lets the rebalance go on; records
// still unfinished are left to the new owner (a warning is logged), and their done calls do
// nothing. Partitions lost (the member was kicked out of the group) are dropped without a
// commit.
type AsyncConsumer struct {
	cl       *kgo.Client
	cfg      Config
	handle   AsyncHandler
	dlq      *Producer
	log      *slog.Logger
	stopping chan struct{} // closed when Run's context ends: revokes stop waiting

	mu       sync.Mutex
	parts    map[topicPartition]*partition // partitions with records dispatched in this assignment
	inflight int                           // records dispatched and not finished, all partitions
	changed  chan struct{}                 // closed and replaced whenever inflight drops
	dead     sync.WaitGroup                // dead-letter goroutines; Add only under mu on a live partition
}

type topicPartition struct {
	topic     string
	partition int32
}

// partition tracks the records of one partition from dispatch to commit.
type partition struct {
	ctx     context.Context // given to the handler; canceled when the partition is dropped
	cancel  context.CancelFunc
	pending []*flight // dispatched and not yet marked for commit, in offset order
	running int       // records of pending that are not finished
	dropped bool      // revoked, lost or Run returned: finishing marks nothing
}

// flight is one dispatched record.
type flight struct {
	kr       *kgo.Record
	finished bool
}

// NewAsyncConsumer returns an AsyncConsumer of topics (full names, see Config.Topic) in group.
// producer publishes dead-letter records and is required. It does not contact the brokers.
func NewAsyncConsumer(cfg Config, group string, topics []string, handle AsyncHandler, producer *Producer, log *slog.Logger) (*AsyncConsumer, error) {
	if err := checkGroupArgs("kafka async consumer", group, topics, handle == nil, producer); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	opts, err := cfg.clientOpts()
	if err != nil {
		return nil, err
	}
	c := &AsyncConsumer{
		cfg: cfg, handle: handle, dlq: producer, log: log.With("group", group),
		stopping: make(chan struct{}),
		parts:    make(map[topicPartition]*partition),
		changed:  make(chan struct{}),
	}
	// Commits: franz-go autocommits only offsets marked with MarkCommitRecords
	// (AutoCommitMarks), and we mark only the end of each partition's finished prefix. franz-go
	// then owns the periodic commit, skips it during join and sync, keeps the leader epoch, and
	// forgets a partition's marks once it is revoked or lost, so a late mark can never commit
	// to a partition another member owns. We commit the marks synchronously ourselves in
	// OnPartitionsRevoked (which replaces franz-go's default revoke commit) and when Run stops.
	//
	// BlockRebalanceOnPoll makes the rebalance callbacks run only between two polls, never
	// while the loop dispatches a polled batch, so a revoked partition's tracking cannot be
	// recreated by records polled before the revoke. The loop never waits while holding a
	// batch: it polls at most as many records as there are free slots (PollRecords).
	opts = append(opts,
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topics...),
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(time.Second),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsRevoked(c.revoked),
		kgo.OnPartitionsLost(c.lost),
		// A revoke may take RevokeWait plus a commit; the group must not kick us meanwhile.
		kgo.RebalanceTimeout(max(60*time.Second, cfg.RevokeWait+cfg.ProduceTimeout+10*time.Second)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), // a new group reads what was published before it joined
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka async consumer %s: %w", group, err)
	}
	c.cl = cl
	return c, nil
}

// Run polls records and hands them to the handler until ctx is done. It then commits the
// finished prefix of every partition and returns nil; records still in flight stay uncommitted
// (another member or a restart gets them), their handler contexts are canceled and their done
// calls do nothing. Run must be called once; call Close after it returned.
func (c *AsyncConsumer) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { close(c.stopping) })
	defer stop()
	for {
		free, ok := c.waitFree(ctx)
		if !ok {
			break
		}
		fetches := c.cl.PollRecords(ctx, free)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			c.cl.AllowRebalance() // the records polled are not dispatched: they are redelivered
			break
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			c.log.Warn("kafka fetch", "topic", topic, "partition", partition, "err", err)
		})
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			for _, kr := range p.Records {
				c.dispatch(ctx, kr)
			}
		})
		c.cl.AllowRebalance()
	}

	c.mu.Lock()
	running := 0
	for tp, p := range c.parts {
		running += p.running
		c.dropLocked(tp, p)
	}
	c.mu.Unlock()
	if running > 0 {
		c.log.Info("kafka async consumer stopping with records in flight; they stay uncommitted", "records", running)
	}
	c.dead.Wait() // their contexts are canceled
	c.commitMarked()
	return nil
}

// waitFree waits until fewer than MaxInFlight records are in flight and returns the number of
// free slots; false means ctx ended.
func (c *AsyncConsumer) waitFree(ctx context.Context) (int, bool) {
	for {
		c.mu.Lock()
		free, changed := c.cfg.MaxInFlight-c.inflight, c.changed
		c.mu.Unlock()
		if free > 0 {
			return free, true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return 0, false
		}
	}
}

// dispatch records kr as in flight and hands it to the handler.
func (c *AsyncConsumer) dispatch(ctx context.Context, kr *kgo.Record) {
	tp := topicPartition{kr.Topic, kr.Partition}
	f := &flight{kr: kr}
	c.mu.Lock()
	p := c.parts[tp]
	if p == nil {
		pctx, cancel := context.WithCancel(ctx)
		p = &partition{ctx: pctx, cancel: cancel}
		c.parts[tp] = p
	}
	p.pending = append(p.pending, f)
	p.running++
	c.inflight++
	c.mu.Unlock()

	r := fromKgo(kr)
	var called atomic.Bool
	c.handle(p.ctx, r, func(err error) {
		if called.Swap(true) {
			c.log.Warn("kafka async handler called done twice", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset)
			return
		}
		if err == nil {
			c.finish(p, f)
			return
		}
		c.mu.Lock()
		if p.dropped {
			c.mu.Unlock()
			return // the new owner handles the record again
		}
		c.dead.Add(1)
		c.mu.Unlock()
		go func() {
			defer c.dead.Done()
			if deadLetter(p.ctx, c.cfg, c.dlq, c.log, r, err) {
				c.finish(p, f)
			}
		}()
	})
}

// finish marks f finished and, when that extends p's finished prefix, marks the prefix's end
// for commit. It does nothing once p was dropped.
func (c *AsyncConsumer) finish(p *partition, f *flight) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.dropped || f.finished {
		return
	}
	f.finished = true
	p.running--
	c.inflight--
	n := 0
	for n < len(p.pending) && p.pending[n].finished {
		n++
	}
	if n > 0 {
		// Under mu, so that a revoke's commit, which runs after the partition is dropped
		// under mu, includes every mark made before.
		c.cl.MarkCommitRecords(p.pending[n-1].kr)
		clear(p.pending[:n])
		p.pending = p.pending[n:]
	}
	c.broadcastLocked()
}

// dropLocked forgets p: its records in flight no longer count, their done calls mark nothing,
// and the handler contexts are canceled.
func (c *AsyncConsumer) dropLocked(tp topicPartition, p *partition) {
	p.dropped = true
	p.cancel()
	c.inflight -= p.running
	p.pending = nil
	delete(c.parts, tp)
	c.broadcastLocked()
}

func (c *AsyncConsumer) broadcastLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// revoked is the OnPartitionsRevoked callback: it waits up to RevokeWait for the records in
// flight of the revoked partitions, drops the partitions and commits what finished.
func (c *AsyncConsumer) revoked(ctx context.Context, _ *kgo.Client, m map[string][]int32) {
	var tps []topicPartition
	for topic, partitions := range m {
		for _, p := range partitions {
			tps = append(tps, topicPartition{topic, p})
		}
	}
	if len(tps) == 0 {
		return
	}
	timer := time.NewTimer(c.cfg.RevokeWait)
	defer timer.Stop()
	logged := false
wait:
	for {
		c.mu.Lock()
		running, changed := c.runningLocked(tps), c.changed
		c.mu.Unlock()
		if running == 0 {
			break
		}
		if !logged {
			c.log.Info("kafka partitions revoked; waiting for their records in flight", "records", running, "partitions", len(tps))
			logged = true
		}
		select {
		case <-changed:
		case <-timer.C:
			break wait
		case <-c.stopping:
			break wait
		case <-ctx.Done(): // the client is closing
			break wait
		}
	}

	c.mu.Lock()
	running := c.runningLocked(tps)
	for _, tp := range tps {
		if p := c.parts[tp]; p != nil {
			c.dropLocked(tp, p)
		}
	}
	c.mu.Unlock()
	if running > 0 {
		c.log.Warn("kafka partitions revoked with records still in flight; the new owner gets them again",
			"records", running, "revoke_wait", c.cfg.RevokeWait)
	}
	c.commitMarked()
}

// lost is the OnPartitionsLost callback: the partitions are no longer ours and a commit would
// fail, so their tracking is just dropped.
func (c *AsyncConsumer) lost(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for topic, partitions := range m {
		for _, p := range partitions {
			tp := topicPartition{topic, p}
			if pt := c.parts[tp]; pt != nil {
				c.dropLocked(tp, pt)
			}
		}
	}
}

func (c *AsyncConsumer) runningLocked(tps []topicPartition) int {
	n := 0
	for _, tp := range tps {
		if p := c.parts[tp]; p != nil {
			n += p.running
		}
	}
	return n
}

// commitMarked synchronously commits the offsets marked so far. A failure is logged: the
// records are then redelivered, which at-least-once allows.
func (c *AsyncConsumer) commitMarked() {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ProduceTimeout)
	defer cancel()
	if err := c.cl.CommitMarkedOffsets(ctx); err != nil {
		c.log.Warn("kafka commit", "err", err)
	}
}

// Close leaves the group and releases the client. Call it after Run returned; done calls made
// after that do nothing.
func (c *AsyncConsumer) Close() error {
	c.cl.CloseAllowingRebalance()
	return nil
}
