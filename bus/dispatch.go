package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/kafka"
	"github.com/google/uuid"
)

// Deliveries runs the turns the bus delivers (turn.Runner).
type Deliveries interface {
	// Submit queues t; done is called once it needs no more work.
	Submit(t agate.Turn, done func())
	// Withdraw drops t, queued or running, without ending it: the bus hands it to another
	// replica.
	Withdraw(id uuid.UUID) bool
}

// Dispatch returns the handler of conversation.inbound (for a kafka.AsyncConsumer): each
// record's turn is queued on the local runner, and the record is committed once the turn
// is over. When the consumer gives a record up before its turn is over (its partition
// moved to another replica) the turn is withdrawn here, so that it runs on one replica
// only; not when stopping reports true: then the runner's shutdown decides. A record that
// is not a turn is poison.
func Dispatch(runner Deliveries, stopping func() bool) func(ctx context.Context, r kafka.Record, done func(error)) {
	return func(ctx context.Context, r kafka.Record, done func(error)) {
		var t agate.Turn
		if err := json.Unmarshal(r.Value, &t); err != nil {
			done(kafka.Poison(fmt.Errorf("decode turn: %w", err)))
			return
		}
		if t.ID == uuid.Nil || t.SessionID == uuid.Nil || t.Tenant == "" || t.Seq <= 0 {
			done(kafka.Poison(fmt.Errorf("turn record without id, session, tenant or seq")))
			return
		}
		var over atomic.Bool
		stop := context.AfterFunc(ctx, func() {
			if !over.Load() && !stopping() {
				runner.Withdraw(t.ID)
			}
		})
		runner.Submit(t, func() {
			over.Store(true)
			stop()
			done(nil)
		})
	}
}
