package bus

import (
	"context"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/kafka"
	"github.com/google/uuid"
)

// LocalRunner is the replica's own turn.Runner.
type LocalRunner interface {
	Send(ctx context.Context, in agate.Inbound) (agate.Accepted, error)
	Cancel(session uuid.UUID) bool
	Forget(session uuid.UUID)
}

// Runner is the runner the API uses on a replica of a scaled-out gateway: a session's turn
// may run on another replica, so Cancel and Forget also go to the others through
// conversation.outbound.
type Runner struct {
	LocalRunner
	hub    Hub
	prod   Producer
	topic  string // full name of conversation.outbound
	origin string
}

// NewRunner wraps the local runner.
func NewRunner(local LocalRunner, hub Hub, prod Producer, topic, origin string) *Runner {
	return &Runner{LocalRunner: local, hub: hub, prod: prod, topic: topic, origin: origin}
}

// controlTimeout bounds the publish of a control record.
const controlTimeout = 2 * time.Second

// Cancel stops the session's running turn, here or on the replica that runs it, and reports
// whether one was running.
func (r *Runner) Cancel(session uuid.UUID) bool {
	if r.LocalRunner.Cancel(session) {
		return true
	}
	if !r.hub.Running(session) {
		return false
	}
	return r.control(session, ControlCancel) == nil
}

// Forget drops the session's turns here and on every other replica.
func (r *Runner) Forget(session uuid.UUID) {
	r.LocalRunner.Forget(session)
	// Best effort: a replica that misses it ends the turn when its next write finds the
	// session gone.
	_ = r.control(session, ControlDeleted)
}

func (r *Runner) control(session uuid.UUID, what string) error {
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	return r.prod.Publish(ctx, kafka.Record{
		Topic: r.topic, Key: []byte(session.String()),
		Headers: map[string]string{HeaderControl: what, agate.HeaderOrigin: r.origin},
	})
}
