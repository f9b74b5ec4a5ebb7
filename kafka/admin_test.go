package kafka

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/agate-gw/agate"
)

func TestEnsureTopicsCreatesMissingTopicsOnly(t *testing.T) {
	c, cfg := newCluster(t) // seeds the inbound topic with 4 partitions
	ctx := context.Background()
	inbound, outbound, wal := cfg.Topic(TopicInbound), cfg.Topic(TopicOutbound), cfg.Topic(TopicMemoryWAL)
	if err := EnsureTopics(ctx, cfg, 2, inbound, outbound, wal); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	if err := EnsureTopics(ctx, cfg, 2, outbound); err != nil {
		t.Fatalf("EnsureTopics again: %v", err)
	}
	for topic, want := range map[string]int{inbound: 4, outbound: 2, wal: 2} {
		if got := len(c.PartitionInfos(topic)); got != want {
			t.Errorf("%s has %d partitions, want %d", topic, got, want)
		}
	}
	if info := c.TopicInfo(outbound); info == nil || info.NumReplicas != 1 {
		t.Errorf("replication of %s = %+v, want 1 on a one-broker cluster", outbound, info)
	}
	if err := EnsureTopics(ctx, cfg, 1); err != nil {
		t.Errorf("EnsureTopics of no topic: %v", err)
	}
}

func TestEnsureTopicsErrors(t *testing.T) {
	_, cfg := newCluster(t)
	ctx := context.Background()
	if err := EnsureTopics(ctx, cfg, 0, "t"); err == nil {
		t.Error("0 partitions: want error")
	}
	// Kafka refuses names that differ from an existing one only in '.' versus '_'.
	collides := "test.conversation_inbound"
	err := EnsureTopics(ctx, cfg, 1, "ok.topic", collides)
	if err == nil || agate.ErrorCode(err) == agate.EUnavailable || !strings.Contains(err.Error(), collides) {
		t.Errorf("colliding topic name: err = %v (code %q), want an error naming the topic, without EUnavailable", err, agate.ErrorCode(err))
	}

	down := Config{Brokers: []string{"127.0.0.1:1"}, DialTimeout: 50 * time.Millisecond, ProduceTimeout: 300 * time.Millisecond}
	err = EnsureTopics(ctx, down, 1, "t")
	if got := agate.ErrorCode(err); got != agate.EUnavailable {
		t.Errorf("unreachable cluster: code %q (%v), want %q", got, err, agate.EUnavailable)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := EnsureTopics(cctx, down, 1, "t"); err == nil || agate.ErrorCode(err) == agate.EUnavailable {
		t.Errorf("cancelled context: err = %v, want the context's error without a code", err)
	}
}
