// Package inmem holds the in-process defaults of the gateway's buses: the session hub that
// fans events out to live SSE and WebSocket subscribers.
package inmem

import (
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
}

type topic struct {
	subs    map[*Subscription]struct{}
	running int64       // seq of the running turn's assistant.started; 0 when none
	live    agate.Event // the latest stream event of the running turn; zero when none
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
		t = &topic{subs: make(map[*Subscription]struct{})}
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
		t = &topic{subs: make(map[*Subscription]struct{})}
		h.sessions[ev.SessionID] = t
	}
	switch {
	case ev.Type == agate.TypeStarted:
		t.running, t.live = ev.Seq, agate.Event{}
	case ev.Type == agate.TypeStream:
		t.live = ev
	case agate.Terminal(ev.Type):
		t.running, t.live = 0, agate.Event{}
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

// Drop forgets a deleted session: its subscriptions are closed (Dropped reports true) and
// its live stream state is cleared.
func (h *Hub) Drop(session uuid.UUID) {
	h.mu.Lock()
	defer h.mu.Unlock()
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
		delete(h.sessions, session)
	}
}
