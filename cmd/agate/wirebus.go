package main

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/bus"
	"github.com/agate-gw/agate/httpapi"
	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/kafka"
	"github.com/agate-gw/agate/turn"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// scaled is a gateway replica's share of the event bus.
type scaled struct {
	runner  *turn.Runner
	api     httpapi.Runner
	jobs    []func(context.Context) error
	closers []func() error
	check   httpapi.Check
}

// wireBus connects this replica to Kafka (DESIGN.md §5): turns come from the consumer
// group of conversation.inbound, the outbox relay publishes what the store wrote, and
// conversation.outbound feeds the local hub with other replicas' events.
func wireBus(cfg config, replica string, store turn.Store, model turn.Model, hub *inmem.Hub,
	tcfg turn.Config, log *slog.Logger, reg prometheus.Registerer) (*scaled, error) {
	log = log.With("replica", replica)
	kcfg := kafka.Config{
		Brokers:        strings.Split(cfg.Kafka, ","),
		ClientID:       "agate-" + replica,
		TopicPrefix:    cfg.KafkaPrefix,
		SASL:           kafka.SASL{Mechanism: cfg.KafkaSASL, User: cfg.KafkaUser, Password: cfg.KafkaPass},
		TLS:            cfg.KafkaTLS,
		ProduceTimeout: cfg.KafkaTimeout,
		// Workers bound what runs at once; the rest wait in the runner's queue, not in Kafka.
		MaxInFlight: max(cfg.MaxQueued, 1),
		RevokeWait:  cfg.Grace,
		DeadLetterSink: func(ctx context.Context, dl kafka.Record) error {
			return store.AddDeadLetter(ctx, agate.DeadLetter{
				Topic: dl.Headers[kafka.HeaderOriginalTopic], Partition: dl.Partition, Offset: dl.Offset,
				Key: dl.Key, Payload: dl.Value, Headers: dl.Headers, Error: dl.Headers[kafka.HeaderError],
			})
		},
	}
	inbound, outbound := kcfg.Topic(agate.TopicInbound), kcfg.Topic(agate.TopicOutbound)
	prod, err := kafka.NewProducer(kcfg)
	if err != nil {
		return nil, err
	}
	relay := bus.NewRelay(store, prod, bus.RelayConfig{Holder: replica, Topic: kcfg.Topic}, log, reg)
	pub := bus.NewPublisher(hub, prod, relay, outbound, replica, 0, log)
	tcfg.External = true
	runner := turn.New(store, model, pub, log, tcfg)

	turns, err := kafka.NewAsyncConsumer(kcfg, cfg.KafkaGroup, []string{inbound}, bus.Dispatch(runner), prod, log)
	if err != nil {
		prod.Close()
		return nil, err
	}
	tail, err := kafka.NewTail(kcfg, []string{outbound}, bus.NewFanout(hub, runner, replica, log).Handle, log)
	if err != nil {
		turns.Close()
		prod.Close()
		return nil, err
	}
	topics := []string{inbound, outbound, kafka.DLQ(inbound), kafka.DLQ(outbound)}
	return &scaled{
		runner: runner,
		api:    bus.NewRunner(runner, hub, prod, outbound, replica),
		jobs: []func(context.Context) error{
			relay.Run, pub.Run,
			func(ctx context.Context) error {
				// Until the topics exist, accepted messages wait in the outbox.
				if !ensureTopics(ctx, kcfg, cfg.KafkaParts, topics, log) {
					return nil
				}
				eg, ctx := errgroup.WithContext(ctx)
				eg.Go(func() error { return tail.Run(ctx) })
				eg.Go(func() error { return turns.Run(ctx) })
				return eg.Wait()
			},
		},
		closers: []func() error{turns.Close, tail.Close, prod.Close},
		check:   httpapi.Check{Name: "kafka", Probe: func(context.Context) error { return relay.Err() }},
	}, nil
}

// ensureTopics creates the gateway's topics, retrying while Kafka is unreachable, and
// reports whether they exist (false: ctx ended first).
func ensureTopics(ctx context.Context, kcfg kafka.Config, partitions int, topics []string, log *slog.Logger) bool {
	wait := 100 * time.Millisecond
	for {
		err := kafka.EnsureTopics(ctx, kcfg, partitions, topics...)
		if err == nil {
			return true
		}
		log.Warn("create Kafka topics; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
			wait = min(2*wait, 10*time.Second)
		}
	}
}
