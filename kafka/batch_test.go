package kafka

import (
	"context"
	"testing"
	"time"

	"github.com/agate-gw/agate"
)

// TestPublishKeepsItsDeadlineWhenTheBrokerIsGone stops the broker and checks that Publish
// and PublishBatch give up at Config.ProduceTimeout with agate.EUnavailable, with the
// client's default timings (franz-go alone fails buffered records only at its next dial
// attempt, seconds later), and that PublishBatch counts the records it stored.
func TestPublishKeepsItsDeadlineWhenTheBrokerIsGone(t *testing.T) {
	c, cfg := newCluster(t)
	cfg.extra = nil
	cfg.ProduceTimeout = 300 * time.Millisecond
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)
	recs := []Record{{Topic: topic, Key: []byte("a"), Value: []byte("1")}, {Topic: topic, Key: []byte("b"), Value: []byte("2")}}
	if n, err := p.PublishBatch(context.Background(), recs); n != 2 || err != nil {
		t.Fatalf("PublishBatch with the broker up: %d stored, %v", n, err)
	}
	c.Close()

	begin := time.Now()
	err := p.Publish(context.Background(), recs[0])
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("Publish took %s with a 300ms timeout", took)
	}
	if agate.ErrorCode(err) != agate.EUnavailable {
		t.Errorf("Publish: %v, want code %s", err, agate.EUnavailable)
	}
	begin = time.Now()
	n, err := p.PublishBatch(context.Background(), recs)
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("PublishBatch took %s with a 300ms timeout", took)
	}
	if n != 0 || agate.ErrorCode(err) != agate.EUnavailable {
		t.Errorf("PublishBatch: %d stored, %v; want 0 and code %s", n, err, agate.EUnavailable)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Publish(ctx, recs[0]); err == nil || agate.ErrorCode(err) == agate.EUnavailable {
		t.Errorf("Publish with a cancelled ctx: %v, want the ctx error without a code", err)
	}
}
