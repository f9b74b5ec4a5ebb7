// Package kafka is Agate's Kafka client layer (franz-go): a synchronous idempotent producer and an
// at-least-once consumer-group loop with a dead-letter topic for poison records.
//
// The transactional outbox relay and the scale-out wiring are built on top of this package elsewhere.
package kafka

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// Topic names from DESIGN.md §5, before Config.TopicPrefix is applied.
const (
	TopicInbound       = "conversation.inbound"  // accepted user turns; key = session_id
	TopicOutbound      = "conversation.outbound" // turn events, fanned out to every replica
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
)

// Config configures producers and consumers. The zero value is usable except for Brokers.
type Config struct {
	Brokers     []string // seed brokers, host:port; required
	ClientID    string   // default DefaultClientID
	TopicPrefix string   // prepended to every topic name by Topic; default none

	SASL                  SASL
	TLS                   bool // dial brokers with TLS (system roots)
	TLSInsecureSkipVerify bool // with TLS: do not verify the broker's certificate (tests only)

	DialTimeout    time.Duration // per connection attempt; default DefaultDialTimeout
	ProduceTimeout time.Duration // deadline of one Publish; default DefaultProduceTimeout

	// HandleAttempts is how many times a consumer calls its handler for one record whose handler
	// keeps returning a non-poison error before it treats the record as poison; default
	// DefaultHandleAttempts. RetryBackoff is the wait before the first retry, doubled for each
	// further one; default DefaultRetryBackoff.
	HandleAttempts int
	RetryBackoff   time.Duration

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
	return append(opts, c.extra...), nil
}
