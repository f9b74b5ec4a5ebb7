package bus

import (
	"context"

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

// Cancel stops the session's running turn, here or on the replica that runs it, and reports
// whether one was running, as far as this replica knows. It does not wait for Kafka.
func (r *Runner) Cancel(session uuid.UUID) bool {
	if r.LocalRunner.Cancel(session) {
		return true
	}
	turn, ok := r.hub.Running(session)
	if !ok {
		return false
	}
	r.control(session, ControlCancel, map[string]string{HeaderTurn: turn})
	return true
}

// Forget drops the session's turns here and, without waiting for Kafka, on every other
// replica. A replica the record does not reach ends the turn when its next write finds the
// session gone.
func (r *Runner) Forget(session uuid.UUID) {
	r.LocalRunner.Forget(session)
	r.control(session, ControlDeleted, nil)
}

func (r *Runner) control(session uuid.UUID, what string, headers map[string]string) {
	h := map[string]string{HeaderControl: what, agate.HeaderOrigin: r.origin}
	for k, v := range headers {
		h[k] = v
	}
	r.prod.Go(kafka.Record{Topic: r.topic, Key: []byte(session.String()), Headers: h}, nil)
}
