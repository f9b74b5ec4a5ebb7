// Package kafka is Agate's Kafka client layer (franz-go):
//   - Producer: a synchronous idempotent producer;
//   - Consumer: an at-least-once consumer-group loop for short handlers, one record at a time
//     per partition;
//   - AsyncConsumer: an at-least-once consumer-group loop for long work (an LLM turn), many
//     records in flight, committing per partition only the finished prefix;
//   - Tail: a group-less reader from the current end, for fan-out to every replica;
//   - EnsureTopics: creates missing topics at start-up.
//
// Consumers send records they cannot handle to Config.DeadLetterSink and to the dead-letter
// topic DLQ(topic). The transactional outbox relay, the dead-letter store and the wiring of
// these loops into the gateway live outside this package.
package kafka

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"github.com/agate-gw/agate"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// Topic names from DESIGN.md §5, before Config.TopicPrefix is applied.
const (
	TopicInbound       = agate.TopicInbound  // accepted user turns; key = session_id
	TopicOutbound      = agate.TopicOutbound // turn events, fanned out to every replica
	TopicToolRequests  = "tool.requests"
	TopicToolResults   = "tool.results"
	TopicMemoryWAL     = "memory.wal"
	TopicConfigUpdates = "config_updates"
)

// DLQ returns the dead-letter topic of topic: topic + ".dlq". Apply it to a full (prefixed) name.
func DLQ(topic string) string { return topic + ".dlq" }

// SASL mechanisms accepted in SASL.Mechanism.
const (
	SASLPlain       = "plain"
	SASLSCRAMSHA256 = "scram-sha-256"
	SASLSCRAMSHA512 = "scram-sha-512"
)

// SASL holds broker credentials. An empty Mechanism means no SASL.
type SASL struct {
	Mechanism string // SASLPlain, SASLSCRAMSHA256 or SASLSCRAMSHA512 (case-insensitive)
	User      string
	Password  string
}

// Defaults applied to zero fields of Config.
const (
	DefaultClientID       = "agate"
	DefaultDialTimeout    = 5 * time.Second
	DefaultProduceTimeout = 10 * time.Second
	DefaultHandleAttempts = 3
	DefaultRetryBackoff   = 200 * time.Millisecond
	DefaultMaxInFlight    = 256
	DefaultRevokeWait     = 30 * time.Second
)

// Config configures producers and consumers. The zero value is usable except for Brokers.
type Config struct {
	Brokers     []string // seed brokers, host:port; required
	ClientID    string   // default DefaultClientID
	TopicPrefix string   // prepended to every topic name by Topic; default none

	SASL                  SASL
	TLS                   bool // dial brokers with TLS (system roots)
	TLSInsecureSkipVerify bool // with TLS: do not verify the broker's certificate (tests only)

	DialTimeout time.Duration // per connection attempt; default DefaultDialTimeout
	// SessionTimeout is how long a group member may go silent before the group gives its
	// partitions to the others (a process killed without leaving); 0: the client's
	// default (45s). Heartbeats go every tenth of it.
	SessionTimeout time.Duration
	ProduceTimeout time.Duration // deadline of one Publish; default DefaultProduceTimeout

	// HandleAttempts is how many times a consumer calls its handler for one record whose handler
	// keeps returning a non-poison error before it treats the record as poison; default
	// DefaultHandleAttempts. RetryBackoff is the wait before the first retry, doubled for each
	// further one; default DefaultRetryBackoff.
	HandleAttempts int
	RetryBackoff   time.Duration

	// DeadLetterSink, when set, receives every record that a Consumer or AsyncConsumer
	// dead-letters, before it is published to the dead-letter topic, and every record whose
	// Tail handler failed (a Tail publishes no dead letters). dl is the dead-letter record:
	// Topic is DLQ(original topic); Key, Value and headers are the original ones plus x-error
	// and x-original-topic/-partition/-offset; Partition and Offset are those of the original
	// record, so that a store can dedupe on (x-original-topic, Partition, Offset). Consumer and
	// AsyncConsumer call it again after RetryBackoff, doubling up to 10s, until it returns nil
	// or ctx is done (the record then stays uncommitted and comes back); Tail calls it once and
	// only logs an error. It must return when ctx is done.
	DeadLetterSink func(ctx context.Context, dl Record) error

	// MaxInFlight bounds how many records an AsyncConsumer has handed to its handler and not
	// yet seen finished; default DefaultMaxInFlight.
	MaxInFlight int
	// RevokeWait is how long an AsyncConsumer whose partitions are revoked by a rebalance waits
	// for their records in flight before it lets the rebalance go on; default
	// DefaultRevokeWait.
	RevokeWait time.Duration

	// extra is appended to the client options; tests use it to shorten group timings.
	extra []kgo.Opt
}

// Topic returns name with the configured prefix.
func (c Config) Topic(name string) string { return c.TopicPrefix + name }

func (c Config) withDefaults() Config {
	if c.ClientID == "" {
		c.ClientID = DefaultClientID
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.ProduceTimeout <= 0 {
		c.ProduceTimeout = DefaultProduceTimeout
	}
	if c.HandleAttempts <= 0 {
		c.HandleAttempts = DefaultHandleAttempts
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = DefaultRetryBackoff
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.RevokeWait <= 0 {
		c.RevokeWait = DefaultRevokeWait
	}
	return c
}

// clientOpts returns the options shared by producers and consumers.
func (c Config) clientOpts() ([]kgo.Opt, error) {
	if len(c.Brokers) == 0 {
		return nil, fmt.Errorf("kafka: no brokers configured")
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.ClientID(c.ClientID),
		kgo.DialTimeout(c.DialTimeout),
	}
	if c.TLS {
		opts = append(opts, kgo.DialTLSConfig(&tls.Config{
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: c.TLSInsecureSkipVerify, //nolint:gosec // opt-in, documented as tests only
		}))
	}
	switch strings.ToLower(c.SASL.Mechanism) {
	case "":
	case SASLPlain:
		opts = append(opts, kgo.SASL(plain.Auth{User: c.SASL.User, Pass: c.SASL.Password}.AsMechanism()))
	case SASLSCRAMSHA256:
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASL.User, Pass: c.SASL.Password}.AsSha256Mechanism()))
	case SASLSCRAMSHA512:
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASL.User, Pass: c.SASL.Password}.AsSha512Mechanism()))
	default:
		return nil, fmt.Errorf("kafka: unknown SASL mechanism %q (want plain, scram-sha-256 or scram-sha-512)", c.SASL.Mechanism)
	}
	if c.SessionTimeout > 0 {
		opts = append(opts, kgo.SessionTimeout(c.SessionTimeout), kgo.HeartbeatInterval(max(c.SessionTimeout/10, 100*time.Millisecond)))
	}
	return append(opts, c.extra...), nil
}
