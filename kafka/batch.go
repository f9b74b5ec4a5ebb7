package kafka

import (
	"context"
	"fmt"
	"sync"

	"github.com/agate-gw/agate"
	"github.com/twmb/franz-go/pkg/kgo"
)

// PublishBatch publishes rs and waits for all of them, at most Config.ProduceTimeout. It
// returns one error per record, nil for each record stored; errors are classified as
// Publish's are. Records with the same key keep their order: when one fails, the later
// ones with its key fail too, so a caller that publishes the failed records again keeps
// every key's order.
//
// The wait ends at the deadline even while the client is still dialling a broker that is
// gone (franz-go only fails buffered records at its next attempt, seconds later); the
// records left in the client fail by Config.ProduceTimeout (at least 1s) or are stored,
// ahead of any later copy of theirs, so a caller's retry can duplicate but not reorder.
func (p *Producer) PublishBatch(ctx context.Context, rs []Record) []error {
	errs := make([]error, len(rs))
	if len(rs) == 0 {
		return errs
	}
	pctx, cancel := context.WithTimeout(ctx, p.cfg.ProduceTimeout)
	defer cancel()
	var (
		mu   sync.Mutex
		over = make([]bool, len(rs))
		left = len(rs)
		all  = make(chan struct{})
	)
	for i, r := range rs {
		p.cl.Produce(pctx, toKgo(r), func(_ *kgo.Record, err error) {
			mu.Lock()
			defer mu.Unlock()
			errs[i], over[i] = err, true
			if left--; left == 0 {
				close(all)
			}
		})
	}
	select {
	case <-all:
	case <-pctx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	out := make([]error, len(rs)) // errs is still written by promises that come late
	for i := range rs {
		err := errs[i]
		if !over[i] {
			err = pctx.Err()
		}
		if err == nil {
			continue
		}
		err = fmt.Errorf("kafka publish to %s: %w", rs[i].Topic, err)
		if ctx.Err() == nil && (!over[i] || unavailable(errs[i])) {
			err = agate.Wrap(agate.EUnavailable, err, "Kafka is unavailable.")
		}
		out[i] = err
	}
	return out
}

// Go publishes r without waiting, for records whose loss is tolerable (live stream pieces
// that a later record supersedes); everything else goes through Publish. done, if not nil,
// is called with the outcome from another goroutine and must not block. When too many
// records wait in the client (Kafka is slow or down) r fails at once rather than blocking.
func (p *Producer) Go(r Record, done func(error)) {
	p.cl.TryProduce(context.Background(), toKgo(r), func(_ *kgo.Record, err error) {
		if done != nil {
			done(err)
		}
	})
}
