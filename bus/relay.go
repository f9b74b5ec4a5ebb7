package bus

import (
	"cmp"
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/kafka"
	"github.com/prometheus/client_golang/prometheus"
)

// Outbox is the part of the store the relay uses; turn.Store implements it.
type Outbox interface {
	LeaseOutbox(ctx context.Context, holder string, ttl time.Duration) (bool, error)
	Unsent(ctx context.Context, limit int) ([]agate.OutboxRecord, error)
	MarkSent(ctx context.Context, ids ...int64) error
	AddDeadLetter(ctx context.Context, d agate.DeadLetter) error
}

// RelayConfig tunes a Relay. Holder is required.
type RelayConfig struct {
	Holder string              // this replica's id, for the relay lease
	Topic  func(string) string // full topic name of an outbox topic; default: unchanged
	Batch  int                 // records read and published at once; default 500
	Poll   time.Duration       // how often the outbox is read when nothing pokes; default 25ms
	Lease  time.Duration       // lease of the relay role, renewed every third of it; default 5s
	Max    time.Duration       // longest wait between attempts while Kafka or the store fails; default 5s
}

func (c *RelayConfig) setDefaults() {
	if c.Topic == nil {
		c.Topic = func(s string) string { return s }
	}
	if c.Batch <= 0 {
		c.Batch = 500
	}
	if c.Poll <= 0 {
		c.Poll = 25 * time.Millisecond
	}
	if c.Lease <= 0 {
		c.Lease = 5 * time.Second
	}
	if c.Max <= 0 {
		c.Max = 5 * time.Second
	}
}

// Relay publishes outbox records to Kafka in write order and then marks them sent. One
// replica relays at a time (it holds the store's outbox lease), so records of a session
// reach their partition in the order they were written. While Kafka is down records wait
// in the outbox; they go out when it returns. A record may be published twice (a publish
// whose acknowledgement was lost, a lease that expired mid-batch), never skipped:
// consumers dedupe by event id.
type Relay struct {
	store Outbox
	prod  Producer
	cfg   RelayConfig
	log   *slog.Logger
	wake  chan struct{}
	err   atomic.Pointer[error] // of the latest lease or relay attempt that failed; nil after a success

	published *prometheus.CounterVec
	leader    prometheus.Gauge
}

// NewRelay returns a relay; Run runs it. reg may be nil.
func NewRelay(store Outbox, prod Producer, cfg RelayConfig, log *slog.Logger, reg prometheus.Registerer) *Relay {
	cfg.setDefaults()
	r := &Relay{
		store: store, prod: prod, cfg: cfg, log: log.With("component", "outbox relay"),
		wake: make(chan struct{}, 1),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kafka_publish_total", Help: "Outbox records published to Kafka, by topic and result.",
		}, []string{"topic", "result"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_leader", Help: "1 while this replica holds the outbox relay lease.",
		}),
	}
	if reg != nil {
		reg.MustRegister(r.published, r.leader)
	}
	return r
}

// Poke tells the relay that records were written, so it reads the outbox now rather than
// at its next poll. It never blocks.
func (r *Relay) Poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Err returns the error of the relay's latest attempt to lease, read or publish, or nil
// if it succeeded: a health probe.
func (r *Relay) Err() error {
	if p := r.err.Load(); p != nil {
		return *p
	}
	return nil
}

func (r *Relay) setErr(err error) {
	if err == nil {
		r.err.Store(nil)
		return
	}
	r.err.Store(&err)
}

// Run relays until ctx is done, then gives the lease up so that another replica relays at
// once. It returns nil.
func (r *Relay) Run(ctx context.Context) error {
	for {
		if !r.acquire(ctx) {
			return nil
		}
		r.lead(ctx)
		if ctx.Err() != nil {
			// Give the role up at once rather than leaving the others to wait out the lease.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			if _, err := r.store.LeaseOutbox(rctx, r.cfg.Holder, time.Nanosecond); err != nil {
				r.log.Warn("release the outbox lease", "err", err)
			}
			cancel()
			r.leader.Set(0)
			return nil
		}
	}
}

// acquire tries to take the lease every third of its length until it holds it (true) or
// ctx is done (false).
func (r *Relay) acquire(ctx context.Context) bool {
	for {
		ok, err := r.store.LeaseOutbox(ctx, r.cfg.Holder, r.cfg.Lease)
		if ctx.Err() != nil {
			return false
		}
		if err != nil {
			r.log.Warn("outbox lease", "err", err)
		}
		r.setErr(err)
		if ok {
			r.log.Info("outbox relay role taken")
			r.leader.Set(1)
			return true
		}
		if !sleep(ctx, r.cfg.Lease/3) {
			return false
		}
	}
}

// lead relays while it holds the lease. A goroutine renews the lease every third of its
// length; when a renewal fails the relay stops at once, before another replica may take
// over, so that two relays do not interleave.
func (r *Relay) lead(ctx context.Context) {
	lctx, lost := context.WithCancel(ctx)
	defer lost()
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		defer lost()
		for sleep(lctx, r.cfg.Lease/3) {
			ok, err := r.store.LeaseOutbox(lctx, r.cfg.Holder, r.cfg.Lease)
			if lctx.Err() != nil {
				return
			}
			if !ok || err != nil {
				r.log.Warn("outbox relay role lost", "err", err)
				r.setErr(err)
				r.leader.Set(0)
				return
			}
		}
	}()
	defer func() { <-renewed }()

	poll := time.NewTicker(r.cfg.Poll)
	defer poll.Stop()
	var backoff time.Duration
	for {
		more, err := r.relay(lctx)
		if lctx.Err() != nil {
			return
		}
		r.setErr(err)
		if err != nil {
			// Back off whatever pokes: a failing Kafka or store is not retried faster
			// because messages keep coming.
			backoff = min(max(2*backoff, r.cfg.Poll), r.cfg.Max)
			r.log.Warn("outbox relay; retrying", "err", err, "retry_in", backoff)
			if !sleep(lctx, backoff) {
				return
			}
			continue
		}
		backoff = 0
		if more {
			continue
		}
		select {
		case <-lctx.Done():
			return
		case <-r.wake:
		case <-poll.C:
		}
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

// relay publishes one batch of unsent records, and reports whether the outbox may hold
// more. A record Kafka refuses for good (too large, a topic it may not write) is moved to
// the dead letters, so that it does not hold up every record behind it.
func (r *Relay) relay(ctx context.Context) (more bool, err error) {
	recs, err := r.store.Unsent(ctx, r.cfg.Batch)
	if err != nil || len(recs) == 0 {
		return false, err
	}
	out := make([]kafka.Record, len(recs))
	for i, rec := range recs {
		out[i] = kafka.Record{Topic: r.cfg.Topic(rec.Topic), Key: []byte(rec.Key), Value: rec.Payload, Headers: rec.Headers}
	}
	var (
		done    = make([]int64, 0, len(recs)) // published, or refused and dead-lettered
		retry   error                         // the first error worth retrying
		refused bool
	)
	for i, err := range r.prod.PublishBatch(ctx, out) {
		rec := recs[i]
		switch {
		case err == nil:
			r.published.WithLabelValues(rec.Topic, "ok").Inc()
			done = append(done, rec.ID)
		case ctx.Err() == nil && agate.ErrorCode(err) != agate.EUnavailable:
			r.published.WithLabelValues(rec.Topic, "refused").Inc()
			r.log.Error("Kafka refused an outbox record; it goes to the dead letters", "topic", rec.Topic, "key", rec.Key, "err", err)
			if derr := r.store.AddDeadLetter(ctx, agate.DeadLetter{
				Topic: out[i].Topic, Partition: -1, Offset: rec.ID, Key: out[i].Key, Payload: rec.Payload,
				Headers: rec.Headers, Error: err.Error(),
			}); derr != nil {
				retry = cmp.Or(retry, derr)
				continue
			}
			done, refused = append(done, rec.ID), true
		default:
			r.published.WithLabelValues(rec.Topic, "error").Inc()
			retry = cmp.Or(retry, err)
		}
	}
	if len(done) > 0 {
		// Store the progress even when ctx just ended: these are published.
		if err := r.store.MarkSent(context.WithoutCancel(ctx), done...); err != nil {
			return false, err // they will be published again: consumers dedupe
		}
	}
	if retry != nil {
		return false, retry
	}
	return refused || len(recs) == r.cfg.Batch, nil
}
