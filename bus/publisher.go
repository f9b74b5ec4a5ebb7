package bus

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/kafka"
	"github.com/google/uuid"
)

// Local is where a replica's own events go first: its hub (inmem.Hub).
type Local interface {
	Publish(ev agate.Event)
}

// Publisher is the turn.Publisher of a replica on the bus. Every event goes to the local
// hub at once. Stored events reach the other replicas through the outbox (Publisher only
// pokes the relay); the live stream pieces of a running turn, which are not stored, are
// sent to conversation.outbound directly, at most one per session every Interval: each
// piece carries the whole text so far, so the latest one supersedes the rest.
type Publisher struct {
	local    Local
	prod     Producer
	relay    interface{ Poke() }
	topic    string // full name of conversation.outbound
	origin   string
	interval time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	pending map[uuid.UUID]agate.Event // latest unsent stream piece per session
	kick    chan struct{}
}

// DefaultInterval is how often a running turn's stream pieces are sent to other replicas.
const DefaultInterval = 50 * time.Millisecond

// NewPublisher returns a Publisher; Run sends the stream pieces. topic is the full name of
// conversation.outbound, origin this replica's id. relay may be nil.
func NewPublisher(local Local, prod Producer, relay interface{ Poke() }, topic, origin string, interval time.Duration, log *slog.Logger) *Publisher {
	if interval <= 0 {
		interval = DefaultInterval
	}
	return &Publisher{
		local: local, prod: prod, relay: relay, topic: topic, origin: origin, interval: interval, log: log,
		pending: make(map[uuid.UUID]agate.Event), kick: make(chan struct{}, 1),
	}
}

// Publish implements turn.Publisher. It never blocks on Kafka.
func (p *Publisher) Publish(ev agate.Event) {
	p.local.Publish(ev)
	switch {
	case agate.Ephemeral(ev.Type):
		p.mu.Lock()
		p.pending[ev.SessionID] = ev
		p.mu.Unlock()
		select {
		case p.kick <- struct{}{}:
		default:
		}
	case ev.Seq > 0:
		if agate.Terminal(ev.Type) {
			p.mu.Lock()
			delete(p.pending, ev.SessionID) // the final text supersedes it
			p.mu.Unlock()
		}
		if p.relay != nil {
			p.relay.Poke()
		}
	}
}

// Run sends pending stream pieces until ctx is done. It returns nil.
func (p *Publisher) Run(ctx context.Context) error {
	tick := time.NewTicker(p.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.kick:
		}
		p.flush()
		// Wait out the interval, so pieces are coalesced while a turn streams.
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (p *Publisher) flush() {
	p.mu.Lock()
	batch := p.pending
	p.pending = make(map[uuid.UUID]agate.Event, len(batch))
	p.mu.Unlock()
	for id, ev := range batch {
		value, err := json.Marshal(ev)
		if err != nil {
			p.log.Error("encode a stream piece", "err", err)
			continue
		}
		p.prod.Go(kafka.Record{
			Topic: p.topic, Key: []byte(id.String()), Value: value,
			Headers: map[string]string{agate.HeaderOrigin: p.origin},
		}, nil) // lost pieces are superseded by the next one or the final event
	}
}
