package kafka

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Record is one Kafka record. Topic is the full topic name (see Config.Topic). Headers carry W3C
// trace context ("traceparent", "tracestate") among others; they are passed through unchanged.
type Record struct {
	Topic   string
	Key     []byte
	Value   []byte
	Headers map[string]string

	// Set on consumed records only.
	Partition int32
	Offset    int64
}

// Producer publishes records with franz-go's idempotent producer (acks=all, retries without
// duplicates or reordering per partition). It is safe for concurrent use.
type Producer struct {
	cl  *kgo.Client
	cfg Config
}

// NewProducer returns a producer for cfg. It does not contact the brokers: an unreachable
// cluster shows up as an error from Publish.
func NewProducer(cfg Config) (*Producer, error) {
	cfg = cfg.withDefaults()
	opts, err := cfg.clientOpts()
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordDeliveryTimeout(max(cfg.ProduceTimeout, time.Second)), // backstop; kgo's minimum is 1s
		kgo.ProducerLinger(0),
		// Let the deadline fail a record already written to a dying connection. Without it an
		// idempotent producer waits for that record's fate, and Publish hung for minutes on a
		// stopped broker in tests. Cost: a record that times out may still have been stored, so a
		// retry may duplicate it; the outbox relay re-publishes anyway and consumers dedupe by
		// event_id (DESIGN.md §5).
		kgo.AllowIdempotentProduceCancellation(),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	return &Producer{cl: cl, cfg: cfg}, nil
}

// Publish writes r and returns once the brokers acknowledged it, or after Config.ProduceTimeout.
// Records with the same key go to the same partition, in Publish order.
//
// When the brokers cannot be reached in time the error wraps agate.EUnavailable; when ctx is
// cancelled it wraps ctx.Err(); a record the broker rejects (too large, not authorized, unknown
// topic) gives an error without a code.
//
// A Publish that fails may still have stored the record (the broker wrote it but the answer was
// lost): retrying it can duplicate, so consumers dedupe by an id in the record.
func (p *Producer) Publish(ctx context.Context, r Record) error {
	return p.PublishBatch(ctx, []Record{r})[0]
}

// Ping checks that a broker answers, within ctx.
func (p *Producer) Ping(ctx context.Context) error {
	return p.cl.Ping(ctx)
}

// unavailable reports whether err means the cluster could not be reached or could not take the
// record right now, rather than that it refused the record.
func unavailable(err error) bool {
	var ke *kerr.Error
	if errors.As(err, &ke) {
		return ke.Retriable
	}
	return true // timeouts, dial and connection errors, ErrRecordTimeout, ErrRecordRetries
}

// Close flushes nothing and releases the client; records still being published fail.
func (p *Producer) Close() error {
	p.cl.Close()
	return nil
}

func toKgo(r Record) *kgo.Record {
	kr := &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value}
	if len(r.Headers) > 0 {
		kr.Headers = make([]kgo.RecordHeader, 0, len(r.Headers))
		for k, v := range r.Headers {
			kr.Headers = append(kr.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
	}
	return kr
}

func fromKgo(kr *kgo.Record) Record {
	r := Record{Topic: kr.Topic, Key: kr.Key, Value: kr.Value, Partition: kr.Partition, Offset: kr.Offset}
	if len(kr.Headers) > 0 {
		r.Headers = make(map[string]string, len(kr.Headers))
		for _, h := range kr.Headers {
			r.Headers[h.Key] = string(h.Value)
		}
	}
	return r
}
