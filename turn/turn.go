// Package turn runs chat turns: for each accepted user message it assembles the context,
// calls the model with streaming, persists the reply and streams every step to the
// session's subscribers. The interfaces it consumes are in deps.go.
package turn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/prompt"
	"github.com/google/uuid"
)

// Config tunes a Runner. The zero value is usable.
type Config struct {
	Workers       int           // turns run at once; default 8
	MaxQueued     int           // accepted turns waiting or running before Send sheds load; default 1000
	TurnTimeout   time.Duration // one model call, first byte to last; default 2m
	Grace         time.Duration // on shutdown, how long running turns may finish; default 10s
	HistoryLimit  int           // messages read for context; default 50
	ContextTokens int           // prompt budget in tokens; default 8000
	MaxTokens     int           // reply limit; 0: the provider's default
	Model         string        // model name passed to the provider; "" for its default
	SystemPrompt  string        // the tenants' default system prompt
	// External: turns arrive through Submit (from the event bus, which also redelivers
	// unfinished ones); Send only stores the message and Recover queues nothing.
	External bool
}

func (c *Config) setDefaults() {
	if c.Workers <= 0 {
		c.Workers = 8
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = 1000
	}
	if c.TurnTimeout <= 0 {
		c.TurnTimeout = 2 * time.Minute
	}
	if c.Grace <= 0 {
		c.Grace = 10 * time.Second
	}
	if c.HistoryLimit <= 0 {
		c.HistoryLimit = 50
	}
	if c.ContextTokens <= 0 {
		c.ContextTokens = 8000
	}
}

// Causes of a cancelled turn.
var (
	errCancelledByClient = errors.New("cancelled by the client")
	errSessionDeleted    = errors.New("session deleted")
	errShutdown          = errors.New("gateway shutting down")
)

// Runner accepts user messages and runs their turns on a bounded pool of workers. One
// session's turns run one at a time, in the order they were accepted; a message sent while
// a turn runs waits for it. Every turn that starts ends with exactly one terminal event,
// unless the gateway shuts down first: then the turn stays pending in the store and runs
// again on the next start.
type Runner struct {
	store Store
	model Model
	pub   Publisher
	log   *slog.Logger
	cfg   Config

	wake chan struct{} // a token: work may be ready

	mu       sync.Mutex
	sessions map[uuid.UUID]*line    // sessions with queued or running turns
	known    map[uuid.UUID]struct{} // ids of the turns queued or running
	ready    []uuid.UUID            // sessions whose next turn may start, FIFO
	queued   int                    // turns queued or running
}

// line is one session's queue of turns.
type line struct {
	turns   []queued
	running bool
	cancel  context.CancelCauseFunc // of the running turn
}

// queued is a turn waiting in its line, with what to call once it is over (see Submit).
type queued struct {
	agate.Turn
	done func()
}

// New returns a Runner. It runs nothing until Run is called; Send may be called before.
func New(store Store, model Model, pub Publisher, log *slog.Logger, cfg Config) *Runner {
	cfg.setDefaults()
	return &Runner{
		store: store, model: model, pub: pub, log: log, cfg: cfg,
		wake:     make(chan struct{}, 1),
		sessions: make(map[uuid.UUID]*line),
		known:    make(map[uuid.UUID]struct{}),
	}
}

// Send persists a user message and queues its turn. It returns once the message is stored:
// what Send acknowledged is never lost. A retried message (same idempotency key) is not
// queued again. When too many turns are waiting it refuses with agate.EOverloaded and
// stores nothing.
func (r *Runner) Send(ctx context.Context, in agate.Inbound) (agate.Accepted, error) {
	r.mu.Lock()
	full := r.queued >= r.cfg.MaxQueued
	r.mu.Unlock()
	if full {
		return agate.Accepted{}, agate.Errorf(agate.EOverloaded, "Too many turns are waiting; retry shortly.")
	}
	acc, err := r.store.Accept(ctx, in)
	if err != nil {
		return agate.Accepted{}, err
	}
	if !acc.Duplicate {
		r.pub.Publish(acc.Event)
		if !r.cfg.External {
			r.enqueue(acc.Turn, nil)
		}
	}
	return acc, nil
}

// Submit queues a turn delivered by the event bus (Config.External). done is called once
// the turn needs no more work: its terminal event is stored, it had finished before (a
// redelivery), it is queued or running already, or its session was deleted. It is not
// called for a turn interrupted by shutdown, which the bus must deliver again. Submit
// does not block.
func (r *Runner) Submit(t agate.Turn, done func()) {
	if done == nil {
		done = func() {}
	}
	r.enqueue(t, done)
}

// Cancel stops the session's running turn, which then ends with an assistant.final whose
// metadata.status is "cancelled". It reports whether a turn was running.
func (r *Runner) Cancel(session uuid.UUID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.sessions[session]
	if l == nil || !l.running || l.cancel == nil {
		return false
	}
	l.cancel(errCancelledByClient)
	return true
}

// backlog returns how many turns of the session wait behind the running one.
func (r *Runner) backlog(session uuid.UUID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l := r.sessions[session]; l != nil {
		return len(l.turns)
	}
	return 0
}

// Forget drops the session's queued turns and stops its running one without a stored end:
// call it when the session is deleted.
func (r *Runner) Forget(session uuid.UUID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.sessions[session]
	if l == nil {
		return
	}
	for _, t := range l.turns {
		delete(r.known, t.ID)
		t.over()
	}
	r.queued -= len(l.turns)
	l.turns = nil
	if l.running && l.cancel != nil {
		l.cancel(errSessionDeleted)
	}
	if !l.running {
		delete(r.sessions, session)
		r.ready = slices.DeleteFunc(r.ready, func(id uuid.UUID) bool { return id == session })
	}
}

// Queued returns the number of turns queued or running.
func (r *Runner) Queued() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.queued
}

// Recover queues the turns that were accepted but never finished (the gateway stopped
// first). Call it before the first Send so that each session's turns keep their order.
func (r *Runner) Recover(ctx context.Context) error {
	pending, err := r.store.Pending(ctx)
	if err != nil {
		return fmt.Errorf("turn: recover pending turns: %w", err)
	}
	if r.cfg.External {
		return nil // the event bus redelivers them
	}
	if len(pending) > 0 {
		r.log.Info("resuming turns accepted before a restart", "turns", len(pending))
	}
	for _, t := range pending {
		r.enqueue(t, nil)
	}
	return nil
}

// Run runs turns until ctx is done. On shutdown running turns get Config.Grace to finish;
// the rest stay pending for Recover. Run returns when every worker has stopped.
func (r *Runner) Run(ctx context.Context) error {
	// Turns run under hard, which outlives ctx by the grace period.
	hard, stop := context.WithCancelCause(context.WithoutCancel(ctx))
	grace := make(chan struct{})
	go func() {
		defer close(grace)
		<-ctx.Done()
		t := time.NewTimer(r.cfg.Grace)
		defer t.Stop()
		select {
		case <-t.C:
			stop(errShutdown)
		case <-hard.Done():
		}
	}()

	var wg sync.WaitGroup
	for range r.cfg.Workers {
		wg.Go(func() { r.work(ctx, hard) })
	}
	wg.Wait()
	stop(errShutdown)
	<-grace
	return nil
}

// enqueue adds t to its session's line; a turn already queued or running is ignored
// (and its done called).
func (r *Runner) enqueue(t agate.Turn, done func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.known[t.ID]; ok {
		if done != nil {
			done()
		}
		return
	}
	r.known[t.ID] = struct{}{}
	l := r.sessions[t.SessionID]
	if l == nil {
		l = &line{}
		r.sessions[t.SessionID] = l
	}
	l.turns = append(l.turns, queued{Turn: t, done: done})
	r.queued++
	if !l.running && len(l.turns) == 1 {
		r.ready = append(r.ready, t.SessionID)
		r.poke()
	}
}

func (r *Runner) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// work takes turns until ctx is done.
func (r *Runner) work(ctx, hard context.Context) {
	for {
		t, turnCtx, ok := r.next(ctx, hard)
		if !ok {
			return
		}
		if r.run(turnCtx, t.Turn, hard.Done()) {
			t.over()
		}
		r.finish(t.Turn)
	}
}

// over reports that the turn needs no more work.
func (q queued) over() {
	if q.done != nil {
		q.done()
	}
}

// next blocks until a turn may start and marks its session running.
func (r *Runner) next(ctx, hard context.Context) (queued, context.Context, bool) {
	for {
		if ctx.Err() != nil {
			return queued{}, nil, false
		}
		r.mu.Lock()
		if len(r.ready) > 0 {
			id := r.ready[0]
			r.ready = r.ready[1:]
			l := r.sessions[id]
			t := l.turns[0]
			l.turns = l.turns[1:]
			l.running = true
			turnCtx, cancel := context.WithCancelCause(hard)
			l.cancel = cancel
			if len(r.ready) > 0 {
				r.poke()
			}
			r.mu.Unlock()
			return t, turnCtx, true
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return queued{}, nil, false
		case <-r.wake:
		}
	}
}

// finish marks t's session idle and schedules its next turn.
func (r *Runner) finish(t agate.Turn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queued--
	delete(r.known, t.ID)
	l := r.sessions[t.SessionID]
	l.cancel(nil)
	l.running, l.cancel = false, nil
	if len(l.turns) == 0 { // also when Forget emptied it
		delete(r.sessions, t.SessionID)
		return
	}
	r.ready = append(r.ready, t.SessionID)
	r.poke()
}

// run gives one turn its reply. It ends the turn with exactly one terminal event unless
// the gateway is shutting down, and reports whether the turn is over (false: it must run
// again after a restart).
func (r *Runner) run(ctx context.Context, t agate.Turn, shutdown <-chan struct{}) (over bool) {
	log := r.log.With("session_id", t.SessionID, "turn", t.ID, "tenant", t.Tenant)
	if r.cfg.External {
		// The bus delivers at least once: a turn that ended on some replica is not run again.
		finished, err := r.store.Finished(ctx, t.ID)
		if err != nil {
			log.Warn("cannot tell whether a delivered turn ran already; running it", "err", err)
		}
		if finished {
			log.Info("turn delivered again after it finished; skipped")
			return true
		}
	}
	begin := time.Now()
	tr := &turnRun{Runner: r, t: t, log: log, shutdown: shutdown}
	defer func() {
		if p := recover(); p != nil {
			log.Error("turn panicked", "panic", p, "stack", string(debug.Stack()))
			tr.end(ctx, agate.Reply{}, agate.Errorf(agate.EInternal, "The gateway hit an internal error while answering; please retry."))
			over = tr.stored
		}
	}()
	reply, err := tr.generate(ctx)
	if err != nil && context.Cause(ctx) == errShutdown {
		log.Info("turn interrupted by shutdown; it will run again on restart")
		return false
	}
	tr.end(ctx, reply, err)
	log.Info("turn finished", "duration", time.Since(begin), "code", agate.ErrorCode(err))
	return tr.stored
}

// turnRun is the state of one turn as it runs.
type turnRun struct {
	*Runner
	t        agate.Turn
	log      *slog.Logger
	shutdown <-chan struct{} // closed when the gateway stops waiting for turns
	base     int64           // seq of the last persisted event, for ephemeral events
	text     string          // streamed so far
	done     bool            // the terminal event was sent
	stored   bool            // the turn is over: its terminal event is stored, or its session is gone
}

// event returns an assistant event of this turn; its metadata.turn_id is the turn's id.
func (tr *turnRun) event(typ, message string, meta map[string]any) agate.Event {
	if meta == nil {
		meta = map[string]any{}
	}
	meta["turn_id"] = tr.t.ID.String()
	return agate.Event{
		EventID: uuid.New(), SessionID: tr.t.SessionID, PersonaID: tr.t.PersonaID,
		Role: agate.RoleAssistant, Type: typ, Message: message, Metadata: meta,
		Version: agate.Version, Seq: tr.base, CreatedAt: time.Now().UTC().Truncate(time.Microsecond),
	}
}

// persist appends ev (and, for a terminal event, finishes the turn) and publishes it.
func (tr *turnRun) persist(ctx context.Context, ev agate.Event) error {
	var done *agate.Turn
	if agate.Terminal(ev.Type) {
		done = &tr.t
	}
	stored, err := tr.store.Append(context.WithoutCancel(ctx), done, ev)
	if err != nil {
		return err
	}
	tr.base = stored[0].Seq
	tr.pub.Publish(stored[0])
	return nil
}

func (tr *turnRun) generate(ctx context.Context) (agate.Reply, error) {
	if err := tr.persist(ctx, tr.event(agate.TypeStarted, "", nil)); err != nil {
		return agate.Reply{}, fmt.Errorf("record turn start: %w", err)
	}
	// Later messages may be queued already: read past them, then keep what precedes this turn.
	events, err := tr.store.Messages(ctx, tr.t.SessionID, math.MaxInt64, tr.cfg.HistoryLimit+tr.backlog(tr.t.SessionID))
	if err != nil {
		return agate.Reply{}, fmt.Errorf("read history: %w", err)
	}
	history := prompt.Conversation(events, tr.t.Seq)
	if len(history) > tr.cfg.HistoryLimit {
		history = history[len(history)-tr.cfg.HistoryLimit:]
	}
	req := prompt.Build(prompt.Input{
		System: tr.cfg.SystemPrompt, History: history, Budget: tr.cfg.ContextTokens,
		Model: tr.cfg.Model, MaxTokens: tr.cfg.MaxTokens,
	})
	if err := tr.persist(ctx, tr.event(agate.TypeThinking, "", map[string]any{"messages": len(req.Messages)})); err != nil {
		return agate.Reply{}, fmt.Errorf("record thinking: %w", err)
	}

	mctx, cancel := context.WithTimeout(ctx, tr.cfg.TurnTimeout)
	defer cancel()
	reply, err := tr.model.Generate(mctx, req, func(d agate.Delta) error {
		if d.Text == "" {
			return nil
		}
		tr.text += d.Text
		ev := tr.event(agate.TypeStream, tr.text, nil)
		ev.Delta, ev.Offset = d.Text, len(tr.text)
		tr.pub.Publish(ev)
		return nil
	})
	if err != nil && mctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		err = agate.Wrap(agate.EUpstreamTimeout, err, fmt.Sprintf("The model did not finish within %s; try a shorter request or retry.", tr.cfg.TurnTimeout))
	}
	if err == nil && reply.Text == "" {
		reply.Text = tr.text
	}
	return reply, err
}

// end sends the turn's terminal event: assistant.final with metadata.status ok, error or
// cancelled. On error its message is the partial text, or when none was streamed, a
// sentence the user can act on; metadata.code says what happened.
func (tr *turnRun) end(ctx context.Context, r agate.Reply, err error) {
	if tr.done {
		return
	}
	tr.done = true
	var ev agate.Event
	switch {
	case err == nil:
		meta := map[string]any{"status": agate.StatusOK, "model": r.Model, "finish_reason": r.FinishReason, "usage": r.Usage}
		ev = tr.event(agate.TypeFinal, r.Text, meta)
	case context.Cause(ctx) == errCancelledByClient:
		ev = tr.event(agate.TypeFinal, tr.text, map[string]any{
			"status": agate.StatusCancelled, "code": string(agate.ECancelled), "detail": "The turn was cancelled.",
		})
	case context.Cause(ctx) == errSessionDeleted:
		ev = tr.event(agate.TypeFinal, tr.text, map[string]any{
			"status": agate.StatusCancelled, "code": string(agate.ECancelled), "detail": "The session was deleted.",
		})
	default:
		code, detail := agate.ErrorCode(err), agate.ErrorMessage(err)
		if code == agate.EInternal {
			tr.log.Error("turn failed", "err", err)
		} else {
			tr.log.Warn("turn failed", "err", err, "code", code)
		}
		msg := tr.text
		if msg == "" {
			msg = detail
		}
		ev = tr.event(agate.TypeFinal, msg, map[string]any{"status": agate.StatusError, "code": string(code), "detail": detail})
	}
	tr.finish(ctx, ev)
}

// Backoff between attempts to store a terminal event.
const (
	retryFirst = 100 * time.Millisecond
	retryMax   = 5 * time.Second
)

// finish stores and publishes the terminal event ev. While the store fails it keeps
// trying (the session's next turn waits), so the turn ends exactly once; on shutdown it
// gives up and the turn, still pending, runs again after the restart. If the session was
// deleted, ev is published unstored (seq 0) so that live state is cleared.
func (tr *turnRun) finish(ctx context.Context, ev agate.Event) {
	wait := retryFirst
	for {
		err := tr.persist(ctx, ev)
		if err == nil {
			tr.stored = true
			return
		}
		if context.Cause(ctx) == errSessionDeleted || agate.ErrorCode(err) == agate.ESessionNotFound {
			ev.Seq = 0
			tr.pub.Publish(ev)
			tr.stored = true
			return
		}
		tr.log.Error("store the terminal event; retrying", "err", err, "retry_in", wait)
		select {
		case <-time.After(wait):
			wait = min(2*wait, retryMax)
		case <-tr.shutdown:
			return
		}
	}
}
