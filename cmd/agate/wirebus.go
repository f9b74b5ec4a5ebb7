package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/bus"
	"github.com/agate-gw/agate/httpapi"
	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/kafka"
	"github.com/agate-gw/agate/tool"
	"github.com/agate-gw/agate/turn"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// scaled is a gateway replica's share of the event bus.
type scaled struct {
	runner  *turn.Runner
	api     httpapi.Runner
	jobs    []func(context.Context) error // stop when shutdown begins
	after   []func(context.Context) error // stop once the runner has stopped
	closers []func() error
	check   httpapi.Check
	waiters *bus.Waiters // of tool calls sent to executors
	poke    func()       // the outbox relay: records were written
}

// wireBus connects this replica to Kafka (DESIGN.md §5): turns come from the consumer
// group of conversation.inbound, the outbox relay publishes what the store wrote, and
// conversation.outbound feeds the local hub with other replicas' events. stopping is done
// once shutdown begins.
func wireBus(cfg config, replica string, store turn.Store, model turn.Model, hub *inmem.Hub,
	tcfg turn.Config, log *slog.Logger, reg prometheus.Registerer) (*scaled, error) {
	log = log.With("replica", replica)
	kcfg := busConfig(cfg, "agate-"+replica)
	// A little more than the workers can run: the backlog stays in Kafka, where a
	// rebalance can hand it to another replica, rather than in this runner's queue.
	kcfg.MaxInFlight = max(2*cfg.Workers, 16)
	// A moved partition waits for its running turns, so that none runs twice: a turn is
	// one model call, or with tools up to AGATE_TOOL_ROUNDS more, each with its tools.
	kcfg.RevokeWait = cfg.TurnTimeout + cfg.Grace
	if cfg.TurnTools != "" {
		// Per round: the model call, then 16 calls at most, 4 at a time, each up to its
		// timeout (calls sent to executors wait side by side).
		kcfg.RevokeWait = time.Duration(cfg.ToolRounds+1)*(cfg.TurnTimeout+4*tool.MaxTimeout) + cfg.Grace
	}
	kcfg.DeadLetterSink = func(ctx context.Context, dl kafka.Record) error {
		return store.AddDeadLetter(ctx, agate.DeadLetter{
			Topic: dl.Headers[kafka.HeaderOriginalTopic], Partition: dl.Partition, Offset: dl.Offset,
			Key: dl.Key, Payload: dl.Value, Headers: dl.Headers, Error: dl.Headers[kafka.HeaderError],
		})
	}
	inbound, outbound := kcfg.Topic(agate.TopicInbound), kcfg.Topic(agate.TopicOutbound)
	prod, err := kafka.NewProducer(kcfg)
	if err != nil {
		return nil, err
	}
	relay := bus.NewRelay(store, prod, bus.RelayConfig{
		Holder: replica, Topic: kcfg.Topic,
		Lease: max(5*time.Second, 2*cfg.KafkaTimeout), // renewed every third: a stalled publish does not lose it
	}, log, reg)
	pub := bus.NewPublisher(hub, prod, relay, outbound, replica, 0, log)
	tcfg.External = true
	runner := turn.New(store, model, pub, log, tcfg)
	toolRequests, toolResults := kcfg.Topic(agate.TopicToolRequests), kcfg.Topic(agate.TopicToolResults)
	topics := []string{inbound, outbound, kafka.DLQ(inbound), kafka.DLQ(outbound),
		toolRequests, toolResults, kafka.DLQ(toolRequests)}
	waiters := bus.NewWaiters()

	// The consumers are made once the topics exist: a group member that cannot poll yet
	// would hold partitions whose turns then wait.
	var stopping atomic.Bool
	consume := func(ctx context.Context) error {
		if !ensureTopics(ctx, kcfg, cfg.KafkaParts, topics, log) {
			return nil
		}
		requeue(ctx, store, prod, inbound, replica, log)
		turns, err := kafka.NewAsyncConsumer(kcfg, cfg.KafkaGroup, []string{inbound},
			bus.Dispatch(runner, stopping.Load), prod, log)
		if err != nil {
			return err
		}
		defer turns.Close()
		tail, err := kafka.NewTail(kcfg, []string{outbound}, bus.NewFanout(hub, runner, replica, log).Handle, log)
		if err != nil {
			return err
		}
		defer tail.Close()
		results, err := kafka.NewTail(kcfg, []string{toolResults}, waiters.Handle, log)
		if err != nil {
			return err
		}
		defer results.Close()
		context.AfterFunc(ctx, func() { stopping.Store(true) })
		eg, ctx := errgroup.WithContext(ctx)
		eg.Go(func() error { return tail.Run(ctx) })
		eg.Go(func() error { return results.Run(ctx) })
		eg.Go(func() error {
			// Turns may wait for tool results: take them once those are tailed.
			select {
			case <-results.Ready():
			case <-ctx.Done():
				return nil
			}
			return turns.Run(ctx)
		})
		return eg.Wait()
	}
	return &scaled{
		runner:  runner,
		api:     bus.NewRunner(runner, hub, prod, outbound, replica),
		jobs:    []func(context.Context) error{consume},
		after:   []func(context.Context) error{relay.Run, pub.Run}, // the ends of turns that finish in the grace period go out too
		closers: []func() error{prod.Close},
		waiters: waiters,
		poke:    relay.Poke,
		check: httpapi.Check{Name: "kafka", Probe: func(ctx context.Context) error {
			if err := prod.Ping(ctx); err != nil {
				return agate.Wrap(agate.EUnavailable, err, "kafka is unreachable; accepted messages wait in the outbox")
			}
			return relay.Err()
		}},
	}, nil
}

// requeue publishes the turns the store has pending to conversation.inbound again: those
// accepted before this gateway used Kafka, and any whose record was lost. A turn that is
// queued or running already, or that has finished, is not run twice (turn.Runner.Submit).
func requeue(ctx context.Context, store turn.Store, prod *kafka.Producer, topic, replica string, log *slog.Logger) {
	pending, err := store.Pending(ctx)
	if err != nil {
		log.Warn("read pending turns to requeue", "err", err)
		return
	}
	if len(pending) == 0 {
		return
	}
	recs := make([]kafka.Record, len(pending))
	for i, t := range pending {
		value, _ := json.Marshal(t) // a Turn always encodes
		recs[i] = kafka.Record{Topic: topic, Key: []byte(t.SessionID.String()), Value: value,
			Headers: map[string]string{agate.HeaderOrigin: replica}}
	}
	failed := 0
	for _, err := range prod.PublishBatch(ctx, recs) {
		if err != nil {
			failed++
		}
	}
	log.Info("requeued pending turns", "turns", len(pending), "failed", failed)
}

// busConfig is the Kafka client configuration of the settings, for client id.
func busConfig(cfg config, clientID string) kafka.Config {
	return kafka.Config{
		Brokers:        strings.Split(cfg.Kafka, ","),
		ClientID:       clientID,
		TopicPrefix:    cfg.KafkaPrefix,
		SASL:           kafka.SASL{Mechanism: cfg.KafkaSASL, User: cfg.KafkaUser, Password: cfg.KafkaPass},
		TLS:            cfg.KafkaTLS,
		ProduceTimeout: cfg.KafkaTimeout,
		SessionTimeout: cfg.KafkaSession,
	}
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
