// Package bus makes several gateway replicas behave as one through the event bus
// (DESIGN.md §5):
//
//   - Relay publishes the transactional outbox to Kafka, one relay at a time, in order.
//   - Dispatcher hands the turns of conversation.inbound, consumed by a consumer group, to
//     the local turn.Runner: each session's turns run on the one replica that owns its
//     partition.
//   - Fanout feeds every replica's hub with the events of conversation.outbound, so a
//     client may follow a session on any replica; Publisher is the local side of it, and
//     Runner carries cancel and delete to the replica that runs the turn.
package bus

import (
	"context"

	"github.com/agate-gw/agate/kafka"
)

// Producer publishes records; kafka.Producer implements it.
type Producer interface {
	// Publish publishes r and waits for the brokers' acknowledgement.
	Publish(ctx context.Context, r kafka.Record) error
	// PublishBatch publishes rs, keeping the order of records with one key (a failed
	// record fails the later ones with its key), and returns one error per record, nil
	// for those stored; an error with a code other than agate.EUnavailable is a refusal
	// that a retry will not change.
	PublishBatch(ctx context.Context, rs []kafka.Record) []error
	// Go publishes r without waiting; done, if not nil, gets the outcome.
	Go(r kafka.Record, done func(error))
}

// Control records travel on conversation.outbound next to events: their HeaderControl
// says what to do with the session whose id is the record's key.
const (
	HeaderControl  = "x-agate-control"
	HeaderTurn     = "x-agate-turn" // with ControlCancel: the metadata.turn_id of the turn to stop
	ControlCancel  = "cancel"       // stop the session's running turn, if it is HeaderTurn's
	ControlDeleted = "forget"       // the session was deleted: drop its turns and streams
)
