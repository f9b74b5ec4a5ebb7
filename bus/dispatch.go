package bus

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/kafka"
	"github.com/google/uuid"
)

// Submitter queues a delivered turn (turn.Runner.Submit).
type Submitter interface {
	Submit(t agate.Turn, done func())
}

// Dispatch returns the handler of conversation.inbound (for a kafka.AsyncConsumer): each
// record's turn is queued on the local runner, and the record is committed once the turn
// is over. A record that is not a turn is poison.
func Dispatch(runner Submitter) func(ctx context.Context, r kafka.Record, done func(error)) {
	return func(_ context.Context, r kafka.Record, done func(error)) {
		var t agate.Turn
		if err := json.Unmarshal(r.Value, &t); err != nil {
			done(kafka.Poison(fmt.Errorf("decode turn: %w", err)))
			return
		}
		if t.ID == uuid.Nil || t.SessionID == uuid.Nil || t.Tenant == "" || t.Seq <= 0 {
			done(kafka.Poison(fmt.Errorf("turn record without id, session, tenant or seq")))
			return
		}
		runner.Submit(t, func() { done(nil) })
	}
}
