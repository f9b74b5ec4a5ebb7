package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// DefaultTailRefresh is how often a Tail looks for partitions added to its topics.
const DefaultTailRefresh = 30 * time.Second

// Tail reads every partition of its topics without a consumer group and without commits, for
// fan-out: every replica that runs a Tail receives every record published after its start.
//
// The handler is called from one goroutine, one record at a time, in offset order per
// partition; a slow handler therefore delays every partition, and it should only hand the
// record on (to local subscribers). A handler error is logged and, when
// Config.DeadLetterSink is set, the dead-letter record is passed to it once; the record is not
// retried and not published to a dead-letter topic, since every replica tails the same records.
//
// Partitions added to the topics later, and topics created after the start, are picked up
// within DefaultTailRefresh and read from their first record. Should the position of a
// partition fall out of the range the brokers hold (records deleted by retention while the
// tail lagged, or a broker that lost data), the tail skips to the partition's end.
type Tail struct {
	cl      *kgo.Client
	adm     *kadm.Client
	cfg     Config
	topics  []string
	handle  func(ctx context.Context, r Record) error
	log     *slog.Logger
	ready   chan struct{}
	refresh time.Duration // how often new partitions are looked for; tests shorten it
}

// NewTail consumes every partition of topics (full names, see Config.Topic) from their current
// end (records published before Run started are not delivered), without a group and without
// commits. It does not contact the brokers.
func NewTail(cfg Config, topics []string, handle func(ctx context.Context, r Record) error, log *slog.Logger) (*Tail, error) {
	switch {
	case len(topics) == 0:
		return nil, fmt.Errorf("kafka tail: no topics")
	case handle == nil:
		return nil, fmt.Errorf("kafka tail: nil handler")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	opts, err := cfg.clientOpts()
	if err != nil {
		return nil, err
	}
	// No consume option: the client is a direct consumer of nothing until Run adds every
	// partition at the exact end offset it listed (see Run).
	opts = append(opts, kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()))
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka tail: %w", err)
	}
	return &Tail{
		cl: cl, adm: kadm.NewClient(cl), cfg: cfg, topics: append([]string(nil), topics...), handle: handle,
		log: log.With("topics", topics), ready: make(chan struct{}), refresh: DefaultTailRefresh,
	}, nil
}

// Ready is closed once the tail has its starting offsets for all partitions, so records
// published after it is closed are delivered (tests and start-up use it).
func (t *Tail) Ready() <-chan struct{} { return t.ready }

// Run lists the end offset of every partition (retrying while the cluster is unreachable),
// closes Ready, and then delivers records until ctx is done; it returns nil then. Run must be
// called once; call Close after it returned.
//
// Why not ConsumeResetOffset(AtEnd): franz-go resolves such an offset lazily, with a
// ListOffsets request once the partition's metadata is loaded, so a record published just
// after Run started could land before the resolved end and be skipped, and nothing tells when
// the resolution happened. Listed offsets given as exact offsets are pinned when Ready closes.
func (t *Tail) Run(ctx context.Context) error {
	known := make(map[topicPartition]bool)
	start, ok := t.endOffsets(ctx, known)
	if !ok {
		return nil
	}
	t.cl.AddConsumePartitions(start)
	close(t.ready)

	refreshCtx, cancel := context.WithCancel(ctx)
	refreshed := make(chan struct{})
	go func() {
		defer close(refreshed)
		t.refreshLoop(refreshCtx, known)
	}()
	defer func() {
		cancel()
		<-refreshed
	}()

	for {
		fetches := t.cl.PollFetches(ctx)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			t.log.Warn("kafka tail fetch", "topic", topic, "partition", partition, "err", err)
		})
		fetches.EachRecord(func(kr *kgo.Record) {
			if ctx.Err() == nil {
				t.deliver(ctx, kr)
			}
		})
	}
}

// deliver hands kr to the handler, and a failure to the dead-letter sink.
func (t *Tail) deliver(ctx context.Context, kr *kgo.Record) {
	r := fromKgo(kr)
	err := t.handle(ctx, r)
	if err == nil || ctx.Err() != nil {
		return
	}
	t.log.Error("kafka tail handler", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", err)
	if t.cfg.DeadLetterSink == nil {
		return
	}
	if err := t.cfg.DeadLetterSink(ctx, deadLetterRecord(r, err)); err != nil {
		t.log.Error("kafka dead-letter sink", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", err)
	}
}

// endOffsets lists the end offset of every partition of the topics, retrying with capped
// backoff until every partition answered, records them in known, and returns them as exact
// offsets; false means ctx ended first. A topic that does not exist yet has no partitions
// here; refreshLoop picks it up once it exists.
func (t *Tail) endOffsets(ctx context.Context, known map[topicPartition]bool) (map[string]map[int32]kgo.Offset, bool) {
	var start map[string]map[int32]kgo.Offset
	ok := retry(ctx, t.cfg.RetryBackoff, func() error {
		lctx, cancel := context.WithTimeout(ctx, t.cfg.ProduceTimeout)
		defer cancel()
		listed, err := t.adm.ListEndOffsets(lctx, t.topics...)
		if err != nil {
			return err
		}
		start = make(map[string]map[int32]kgo.Offset)
		var errs []error
		listed.Each(func(o kadm.ListedOffset) {
			switch {
			case errors.Is(o.Err, kerr.UnknownTopicOrPartition) && o.Partition == -1:
				t.log.Warn("kafka tail: topic does not exist yet", "topic", o.Topic)
			case o.Err != nil:
				errs = append(errs, fmt.Errorf("%s[%d]: %w", o.Topic, o.Partition, o.Err))
			default:
				if start[o.Topic] == nil {
					start[o.Topic] = make(map[int32]kgo.Offset)
				}
				start[o.Topic][o.Partition] = kgo.NewOffset().At(o.Offset)
			}
		})
		return errors.Join(errs...)
	}, func(err error) {
		t.log.Warn("kafka tail: listing end offsets", "err", err)
	})
	if !ok {
		return nil, false
	}
	for topic, ps := range start {
		for p := range ps {
			known[topicPartition{topic, p}] = true
		}
	}
	return start, true
}

// refreshLoop adds partitions that appear in the topics, from their first record, until ctx is
// done. Failures are logged at debug level: the next round tries again.
func (t *Tail) refreshLoop(ctx context.Context, known map[topicPartition]bool) {
	tick := time.NewTicker(t.refresh)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
		mctx, cancel := context.WithTimeout(ctx, t.cfg.ProduceTimeout)
		md, err := t.adm.Metadata(mctx, t.topics...)
		cancel()
		if err != nil {
			t.log.Debug("kafka tail: metadata refresh", "err", err)
			continue
		}
		added, n := make(map[string]map[int32]kgo.Offset), 0
		for _, td := range md.Topics {
			if td.Err != nil {
				continue
			}
			for p := range td.Partitions {
				tp := topicPartition{td.Topic, p}
				if known[tp] {
					continue
				}
				known[tp] = true
				if added[td.Topic] == nil {
					added[td.Topic] = make(map[int32]kgo.Offset)
				}
				added[td.Topic][p] = kgo.NewOffset().AtStart()
				n++
			}
		}
		if len(added) > 0 {
			t.log.Info("kafka tail: new partitions", "partitions", n)
			t.cl.AddConsumePartitions(added)
		}
	}
}

// Close releases the client. Call it after Run returned.
func (t *Tail) Close() error {
	t.cl.Close()
	return nil
}
