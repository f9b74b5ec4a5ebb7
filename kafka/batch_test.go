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
// attempt, seconds later).
func TestPublishKeepsItsDeadlineWhenTheBrokerIsGone(t *testing.T) {
	c, cfg := newCluster(t)
	cfg.extra = nil
	cfg.ProduceTimeout = 300 * time.Millisecond
	p := newProducer(t, cfg)
	topic := cfg.Topic(TopicInbound)
	recs := []Record{{Topic: topic, Key: []byte("a"), Value: []byte("1")}, {Topic: topic, Key: []byte("b"), Value: []byte("2")}}
	if errs := p.PublishBatch(context.Background(), recs); errs[0] != nil || errs[1] != nil {
		t.Fatalf("PublishBatch with the broker up: %v", errs)
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
	errs := p.PublishBatch(context.Background(), recs)
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("PublishBatch took %s with a 300ms timeout", took)
	}
	for i, err := range errs {
		if agate.ErrorCode(err) != agate.EUnavailable {
			t.Errorf("PublishBatch record %d: %v, want code %s", i, err, agate.EUnavailable)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Publish(ctx, recs[0]); err == nil || agate.ErrorCode(err) == agate.EUnavailable {
		t.Errorf("Publish with a cancelled ctx: %v, want the ctx error without a code", err)
	}
}
