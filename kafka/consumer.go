package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Headers set on a record sent to a dead-letter topic, next to the original headers.
const (
	HeaderError             = "x-error"
	HeaderOriginalTopic     = "x-original-topic"
	HeaderOriginalPartition = "x-original-partition"
	HeaderOriginalOffset    = "x-original-offset"
)

type poisonError struct{ err error }

func (e poisonError) Error() string { return "poison record: " + e.err.Error() }
func (e poisonError) Unwrap() error { return e.err }

// Poison marks err as permanent: a handler returns Poison(err) for a record it can never handle
// (undecodable, invalid), and the consumer sends the record to the dead-letter topic at once
// instead of retrying it. Poison(nil) is nil.
func Poison(err error) error {
	if err == nil {
		return nil
	}
	return poisonError{err}
}

// IsPoison reports whether err's chain holds an error made by Poison.
func IsPoison(err error) bool {
	var p poisonError
	return errors.As(err, &p)
}

// Handler handles one record. It is called for the records of one partition in offset order, and
// concurrently for different partitions. A nil return commits the record; see Consumer for errors.
type Handler func(ctx context.Context, r Record) error

// Consumer consumes topics as a member of a consumer group with at-least-once delivery: a
// record's offset is committed only after its handler returned (autocommit is off), so a crash
// or an outage redelivers the records whose handling was not committed, never skips one.
//
// When the handler returns an error:
//   - Poison(err): the record is published to DLQ(topic) with the original key, value and
//     headers plus x-error, x-original-topic, x-original-partition and x-original-offset, then
//     committed, and consumption goes on.
//   - any other error: the handler is called again after Config.RetryBackoff, doubling, up to
//     Config.HandleAttempts calls in all; then the record is treated as poison.
//
// A dead-lettered record first goes to Config.DeadLetterSink when it is set. If the sink or the
// dead-letter publish fails (Kafka down), it is retried with capped backoff until it succeeds or
// Run's context is done; the record is not committed before that.
//
// Rebalances wait while a polled batch is being handled and committed, so a handler should
// return well within the group's rebalance timeout (kgo's default, 60s).
type Consumer struct {
	cl     *kgo.Client
	cfg    Config
	handle Handler
	dlq    *Producer
	log    *slog.Logger
}

// NewConsumer returns a consumer of topics (full names, see Config.Topic) in group. producer
// publishes dead-letter records and is required. It does not contact the brokers.
func NewConsumer(cfg Config, group string, topics []string, handle func(ctx context.Context, r Record) error, producer *Producer, log *slog.Logger) (*Consumer, error) {
	if err := checkGroupArgs("kafka consumer", group, topics, handle == nil, producer); err != nil {
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
	opts = append(opts,
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topics...),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), // a new group reads what was published before it joined
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer %s: %w", group, err)
	}
	return &Consumer{cl: cl, cfg: cfg, handle: handle, dlq: producer, log: log.With("group", group)}, nil
}

// checkGroupArgs checks the arguments the group consumers (kind) share.
func checkGroupArgs(kind, group string, topics []string, noHandler bool, producer *Producer) error {
	switch {
	case group == "":
		return fmt.Errorf("%s: empty group", kind)
	case len(topics) == 0:
		return fmt.Errorf("%s %s: no topics", kind, group)
	case noHandler:
		return fmt.Errorf("%s %s: nil handler", kind, group)
	case producer == nil:
		return fmt.Errorf("%s %s: nil producer (needed for the dead-letter topic)", kind, group)
	}
	return nil
}

// Run polls and handles records until ctx is done, then returns nil after the in-flight handlers
// finished and their records were committed. Records of a polled batch not yet handled when ctx
// ends are left uncommitted and are redelivered to the group later. Run must be called once.
func (c *Consumer) Run(ctx context.Context) error {
	for {
		fetches := c.cl.PollFetches(ctx)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			c.commit(nil) // nothing handled; just release the rebalance block
			return nil
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			c.log.Warn("kafka fetch", "topic", topic, "partition", partition, "err", err)
		})

		var (
			mu      sync.Mutex
			handled []*kgo.Record // last handled record per partition
			wg      sync.WaitGroup
		)
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) == 0 {
				return
			}
			wg.Go(func() {
				var last *kgo.Record
				for _, kr := range p.Records {
					if !c.process(ctx, kr) {
						break
					}
					last = kr
				}
				if last != nil {
					mu.Lock()
					handled = append(handled, last)
					mu.Unlock()
				}
			})
		})
		wg.Wait()
		c.commit(handled)
		if ctx.Err() != nil {
			return nil
		}
	}
}

// commit commits the handled records and then lets a pending rebalance go on.
func (c *Consumer) commit(handled []*kgo.Record) {
	defer c.cl.AllowRebalance()
	if len(handled) == 0 {
		return
	}
	// Commit even when Run's ctx is done: these records were handled.
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ProduceTimeout)
	defer cancel()
	if err := c.cl.CommitRecords(ctx, handled...); err != nil {
		// The records will be redelivered: at-least-once.
		c.log.Warn("kafka commit", "records", len(handled), "err", err)
	}
}

// process handles kr until it succeeds or goes to the dead-letter topic, and reports whether it
// may be committed (false only when ctx ended first).
func (c *Consumer) process(ctx context.Context, kr *kgo.Record) bool {
	r := fromKgo(kr)
	var err error
	backoff := c.cfg.RetryBackoff
	for attempt := 1; ; attempt++ {
		err = c.handle(ctx, r)
		if err == nil {
			return true
		}
		if IsPoison(err) || attempt >= c.cfg.HandleAttempts {
			break
		}
		if ctx.Err() != nil || !sleep(ctx, backoff) {
			return false
		}
		backoff *= 2
	}
	if ctx.Err() != nil && !IsPoison(err) {
		return false // the handler most likely failed because we are stopping
	}
	return c.deadLetter(ctx, r, err)
}

func (c *Consumer) deadLetter(ctx context.Context, r Record, cause error) bool {
	return deadLetter(ctx, c.cfg, c.dlq, c.log, r, cause)
}

// deadLetterRecord returns the dead-letter record of r: r's key, value and headers plus the
// x-error and x-original-* headers, for DLQ(r.Topic), with Partition and Offset kept from r.
func deadLetterRecord(r Record, cause error) Record {
	h := make(map[string]string, len(r.Headers)+4)
	for k, v := range r.Headers {
		h[k] = v
	}
	h[HeaderError] = cause.Error()
	h[HeaderOriginalTopic] = r.Topic
	h[HeaderOriginalPartition] = strconv.FormatInt(int64(r.Partition), 10)
	h[HeaderOriginalOffset] = strconv.FormatInt(r.Offset, 10)
	return Record{Topic: DLQ(r.Topic), Key: r.Key, Value: r.Value, Headers: h, Partition: r.Partition, Offset: r.Offset}
}

// deadLetter hands r's dead-letter record to cfg.DeadLetterSink (when set) and then publishes
// it to DLQ(r.Topic), retrying each step with capped backoff until it succeeds. It reports
// false when ctx ended first: the record must then not be committed.
func deadLetter(ctx context.Context, cfg Config, p *Producer, log *slog.Logger, r Record, cause error) bool {
	dl := deadLetterRecord(r, cause)
	if cfg.DeadLetterSink != nil {
		ok := retry(ctx, cfg.RetryBackoff, func() error { return cfg.DeadLetterSink(ctx, dl) }, func(err error) {
			log.Error("kafka dead-letter sink", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", err)
		})
		if !ok {
			return false
		}
	}
	ok := retry(ctx, cfg.RetryBackoff, func() error { return p.Publish(ctx, dl) }, func(err error) {
		log.Error("kafka dead-letter publish", "topic", dl.Topic, "err", err)
	})
	if ok {
		log.Warn("kafka record sent to dead-letter topic", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", cause)
	}
	return ok
}

// retry calls f until it returns nil, waiting backoff after the first failure and doubling up
// to 10s; failed is called with each error. It reports false when ctx ended first.
func retry(ctx context.Context, backoff time.Duration, f func() error, failed func(error)) bool {
	for {
		err := f()
		if err == nil {
			return true
		}
		failed(err)
		if !sleep(ctx, backoff) {
			return false
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// sleep waits d and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Close leaves the group and releases the client. Call it after Run returned.
func (c *Consumer) Close() error {
	c.cl.CloseAllowingRebalance()
	return nil
}
