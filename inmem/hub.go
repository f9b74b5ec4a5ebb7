// Package inmem holds the in-process defaults of the gateway's buses: the session hub that
// fans events out to live SSE and WebSocket subscribers.
package inmem

import (
	"math"
	"sync"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
)

// DefaultBuffer is how many events a subscriber may fall behind before it is dropped.
const DefaultBuffer = 1024

// Hub fans a session's events out to its live subscribers and remembers which turn of the
// session is running and the latest text it streamed, so that a client that (re)connects
// mid-turn can be sent exactly the text it missed. The zero Hub is not usable; call NewHub.
//
// Publish never blocks: a subscriber whose buffer is full is dropped (its channel is closed
// and Lagged reports true); it reconnects and resumes from the store.
type Hub struct {
	buffer int

	mu       sync.Mutex
	sessions map[uuid.UUID]*topic
	ended    recent // sessions forgotten by gc, with the seq of their latest terminal event
}

// recentEnds is how many forgotten sessions' latest ends the hub remembers, so that an
// event repeated by the bus after its turn ended cannot mark the turn running again.
const recentEnds = 4096

// recent is a bounded map, oldest entries evicted first.
type recent struct {
	seq   map[uuid.UUID]int64
	order []uuid.UUID // ring of the keys, next is the oldest
	next  int
}

func (r *recent) put(id uuid.UUID, seq int64) {
	if r.seq == nil {
		r.seq = make(map[uuid.UUID]int64)
	}
	if _, ok := r.seq[id]; !ok {
		if len(r.order) < recentEnds {
			r.order = append(r.order, id)
		} else {
			delete(r.seq, r.order[r.next])
			r.order[r.next] = id
			r.next = (r.next + 1) % recentEnds
		}
	}
	r.seq[id] = seq
}

type topic struct {
	subs    map[*Subscription]struct{}
	running int64       // seq of the running turn's assistant.started; 0 when none
	turn    string      // its metadata.turn_id
	live    agate.Event // the latest stream event of the running turn; zero when none
	ended   int64       // seq of the latest terminal event; math.MaxInt64 once dropped
}

// NewHub returns a hub whose subscribers buffer up to buffer events (DefaultBuffer if <= 0).
func NewHub(buffer int) *Hub {
	if buffer <= 0 {
		buffer = DefaultBuffer
	}
	return &Hub{buffer: buffer, sessions: make(map[uuid.UUID]*topic)}
}

// Subscription receives the events of one session published after Subscribe returned.
type Subscription struct {
	hub     *Hub
	session uuid.UUID
	ch      chan agate.Event
	running int64       // the topic's running turn when subscribed
	live    agate.Event // its latest stream event then
	lagged  bool        // guarded by hub.mu
	dropped bool        // guarded by hub.mu
	closed  bool        // guarded by hub.mu
}

// Snapshot tells what was streaming when the subscription began: the seq of the running
// turn's assistant.started (0 if none) and its latest assistant.stream event (ok false if
// it had streamed nothing yet). Every later event of that turn is in Events.
func (s *Subscription) Snapshot() (running int64, live agate.Event, ok bool) {
	return s.running, s.live, s.live.Type != ""
}

// Events returns the channel of events. It is closed when the subscription is closed or
// dropped for lagging.
func (s *Subscription) Events() <-chan agate.Event { return s.ch }

// Lagged reports whether the subscription was dropped because its reader fell behind.
func (s *Subscription) Lagged() bool {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return s.lagged
}

// Dropped reports whether the subscription was ended by Drop (the session is gone).
func (s *Subscription) Dropped() bool {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return s.dropped
}

// Close ends the subscription. It is safe to call more than once.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	s.hub.remove(s)
}

// Subscribe starts receiving the session's events.
func (h *Hub) Subscribe(session uuid.UUID) *Subscription {
	s := &Subscription{hub: h, session: session, ch: make(chan agate.Event, h.buffer)}
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.sessions[session]
	if t == nil {
		t = &topic{subs: make(map[*Subscription]struct{}), ended: h.ended.seq[session]}
		h.sessions[session] = t
	}
	t.subs[s] = struct{}{}
	s.running, s.live = t.running, t.live
	return s
}

// Publish sends ev to the session's subscribers. It implements turn.Publisher.
func (h *Hub) Publish(ev agate.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.sessions[ev.SessionID]
	if t == nil {
		if ev.Type != agate.TypeStarted && ev.Type != agate.TypeStream {
			return // nobody listens and no turn state to keep
		}
		t = &topic{subs: make(map[*Subscription]struct{}), ended: h.ended.seq[ev.SessionID]}
		h.sessions[ev.SessionID] = t
	}
	// Events of other replicas arrive through the event bus, where a retried publish can
	// repeat one or a stream event overtake the turn's start: the turn state only moves
	// forward. Subscribers get every event; their followers drop what they have.
	switch {
	case ev.Type == agate.TypeStarted:
		if ev.Seq > t.running && ev.Seq > t.ended {
			t.running, t.live = ev.Seq, agate.Event{}
			t.turn, _ = ev.Metadata["turn_id"].(string)
		}
	case ev.Type == agate.TypeStream:
		if t.running != 0 && ev.Seq >= t.running && (t.live.Type == "" || ev.Offset > t.live.Offset) {
			t.live = ev
		}
	case agate.Terminal(ev.Type):
		if ev.Seq == 0 || ev.Seq >= t.running {
			t.running, t.live, t.turn = 0, agate.Event{}, ""
		}
		t.ended = max(t.ended, ev.Seq)
	}
	for s := range t.subs {
		select {
		case s.ch <- ev:
		default:
			s.lagged = true
			h.remove(s)
		}
	}
	h.gc(ev.SessionID, t)
}

// Running returns the metadata.turn_id of the session's running turn, and whether one is
// running, as far as the events published to the hub tell.
func (h *Hub) Running(session uuid.UUID) (turn string, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.sessions[session]
	if t == nil || t.running == 0 {
		return "", false
	}
	return t.turn, true
}

// Drop forgets a deleted session: its subscriptions are closed (Dropped reports true) and
// its live stream state is cleared. Events of its turns that come later (from another
// replica, through the bus) reach subscribers but mark no turn running.
func (h *Hub) Drop(session uuid.UUID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ended.put(session, math.MaxInt64)
	t := h.sessions[session]
	if t == nil {
		return
	}
	for s := range t.subs {
		s.dropped = true
		h.remove(s)
	}
	delete(h.sessions, session)
}

// Sessions returns the number of sessions the hub keeps state for, for tests.
func (h *Hub) Sessions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

// Subscribers returns the number of live subscriptions, for metrics and tests.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, t := range h.sessions {
		n += len(t.subs)
	}
	return n
}

// remove drops s; h.mu must be held.
func (h *Hub) remove(s *Subscription) {
	if s.closed {
		return
	}
	s.closed = true
	close(s.ch)
	if t := h.sessions[s.session]; t != nil {
		delete(t.subs, s)
		h.gc(s.session, t)
	}
}

// gc forgets a session with neither subscribers nor a running turn; h.mu must be held.
func (h *Hub) gc(session uuid.UUID, t *topic) {
	if len(t.subs) == 0 && t.running == 0 && t.live.Type == "" {
		if t.ended > 0 && h.ended.seq[session] < t.ended {
			h.ended.put(session, t.ended)
		}
		delete(h.sessions, session)
	}
}
