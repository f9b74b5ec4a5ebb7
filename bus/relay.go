package bus

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/kafka"
	"github.com/prometheus/client_golang/prometheus"
)

// Outbox is the part of the store the relay reads; turn.Store implements it.
type Outbox interface {
	LeaseOutbox(ctx context.Context, holder string, ttl time.Duration) (bool, error)
	Unsent(ctx context.Context, limit int) ([]agate.OutboxRecord, error)
	MarkSent(ctx context.Context, ids ...int64) error
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

// Run relays until ctx is done. It returns nil.
func (r *Relay) Run(ctx context.Context) error {
	var (
		leading bool
		renewAt time.Time
		backoff time.Duration
	)
	poll := time.NewTicker(r.cfg.Poll)
	defer poll.Stop()
	for {
		if time.Now().After(renewAt) {
			ok, err := r.store.LeaseOutbox(ctx, r.cfg.Holder, r.cfg.Lease)
			if err != nil && ctx.Err() == nil {
				r.log.Warn("outbox lease", "err", err)
			}
			if ok != leading {
				r.log.Info("outbox relay role", "leader", ok)
			}
			leading = ok && err == nil
			if err != nil || !leading {
				r.setErr(err) // a leader's error is the relay's, until it relays again
			}
			renewAt = time.Now().Add(r.cfg.Lease / 3)
			r.leader.Set(map[bool]float64{true: 1}[leading])
		}
		wait := r.cfg.Poll
		if leading {
			more, err := r.relay(ctx)
			r.setErr(err)
			switch {
			case err != nil:
				backoff = min(max(2*backoff, r.cfg.Poll), r.cfg.Max)
				wait = backoff
				if ctx.Err() == nil {
					r.log.Warn("outbox relay; retrying", "err", err, "retry_in", backoff)
				}
			case more:
				backoff, wait = 0, 0
			default:
				backoff = 0
			}
		}
		if wait == 0 {
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		case <-r.wake:
			t.Stop()
		case <-poll.C:
			t.Stop()
		}
	}
}

// relay publishes one batch of unsent records, and reports whether the outbox may hold
// more.
func (r *Relay) relay(ctx context.Context) (more bool, err error) {
	recs, err := r.store.Unsent(ctx, r.cfg.Batch)
	if err != nil || len(recs) == 0 {
		return false, err
	}
	out := make([]kafka.Record, len(recs))
	for i, rec := range recs {
		out[i] = kafka.Record{Topic: r.cfg.Topic(rec.Topic), Key: []byte(rec.Key), Value: rec.Payload, Headers: rec.Headers}
	}
	n, perr := r.prod.PublishBatch(ctx, out)
	for i := range n {
		r.published.WithLabelValues(recs[i].Topic, "ok").Inc()
	}
	if n < len(recs) {
		r.published.WithLabelValues(recs[n].Topic, "error").Inc()
	}
	if n > 0 {
		ids := make([]int64, n)
		for i := range n {
			ids[i] = recs[i].ID
		}
		// Store the progress even when ctx just ended: these are published.
		if err := r.store.MarkSent(context.WithoutCancel(ctx), ids...); err != nil {
			return false, err // they will be published again: consumers dedupe
		}
	}
	if perr != nil {
		return false, perr
	}
	return len(recs) == r.cfg.Batch, nil
}
