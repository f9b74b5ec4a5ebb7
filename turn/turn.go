// Package turn runs chat turns: for each accepted user message it assembles the context,
// calls the model with streaming, persists the reply and streams every step to the
// session's subscribers. The interfaces it consumes are in deps.go.
package turn

import (
	"cmp"
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
	// SystemPromptFor, when set, gives a tenant's system prompt ("": SystemPrompt).
	SystemPromptFor func(tenant string) string
	// Tools, when set, are offered to the model, and the calls it makes run through it:
	// the results go back to the model, at most MaxToolRounds times (default 8; then it
	// is asked to answer without tools), at most ToolParallel calls at once (default 4).
	Tools         Tools
	MaxToolRounds int
	ToolParallel  int
	// Admit, when set, is asked before each model call with the request about to be
	// made. An error refuses the call: the turn ends with its code (agate.EPolicyDenied,
	// agate.EBudgetExceeded, …) and message. Otherwise settle is called exactly once,
	// with the tokens the call used (0 when it failed before any were reported).
	// Admit may bound the request (its MaxTokens) so that what it reserves holds.
	Admit func(ctx context.Context, t agate.Turn, req *agate.ModelRequest) (settle func(used int64), err error)
	// External: turns arrive through Submit (from the event bus, which also redelivers
	// unfinished ones) and leave through Withdraw when the bus hands them to another
	// replica; Send only stores the message and Recover queues nothing.
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
	if c.MaxToolRounds <= 0 {
		c.MaxToolRounds = 8
	}
	if c.ToolParallel <= 0 {
		c.ToolParallel = 4
	}
}

// Causes of a cancelled turn.
var (
	errCancelledByClient = errors.New("cancelled by the client")
	errSessionDeleted    = errors.New("session deleted")
	errShutdown          = errors.New("gateway shutting down")
	errWithdrawn         = errors.New("turn withdrawn")
)

// interrupted reports whether ctx, a turn's context, was cancelled by a shutdown or a
// Withdraw: the turn stops without an end and must run again, here or elsewhere.
func interrupted(ctx context.Context) bool {
	c := context.Cause(ctx)
	return c == errShutdown || c == errWithdrawn
}

// Runner accepts user messages and runs their turns on a bounded pool of workers. One
// session's turns run one at a time, in the order they were accepted; a message sent while
// a turn runs waits for it. Every turn that starts ends with exactly one terminal event,
// unless the gateway shuts down first or the turn is withdrawn: then the turn stays
// pending in the store and runs again on the next start (or, withdrawn, wherever the bus
// delivers it next).
type Runner struct {
	store Store
	model Model
	pub   Publisher
	log   *slog.Logger
	cfg   Config

	wake chan struct{} // a token: work may be ready

	mu       sync.Mutex
	sessions map[uuid.UUID]*line  // sessions with queued or running turns
	known    map[uuid.UUID]*entry // the turns queued or running, by id, unless withdrawn
	ready    []uuid.UUID          // sessions whose next turn may start, FIFO
	queued   int                  // turns queued or running (withdrawn ones until they stop)
}

// line is one session's queue of turns.
type line struct {
	turns    []*entry                // waiting, in order
	running  *entry                  // nil while no turn of the session runs
	cancel   context.CancelCauseFunc // of the running turn
	withdraw context.CancelCauseFunc // of the running turn's stop context (see next)
}

// entry is a turn queued or running, with what to call once it is over (see Submit).
type entry struct {
	agate.Turn
	done []func() // guarded by Runner.mu
}

// New returns a Runner. It runs nothing until Run is called; Send may be called before.
func New(store Store, model Model, pub Publisher, log *slog.Logger, cfg Config) *Runner {
	cfg.setDefaults()
	return &Runner{
		store: store, model: model, pub: pub, log: log, cfg: cfg,
		wake:     make(chan struct{}, 1),
		sessions: make(map[uuid.UUID]*line),
		known:    make(map[uuid.UUID]*entry),
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

// Submit queues a turn delivered by the event bus (Config.External). done is called once,
// when the turn needs no more work: its terminal event is stored, it had finished before (a
// redelivery), or its session was deleted. A turn delivered again while it is queued or
// running is not queued twice: done joins the callbacks of that turn, all called when it
// is over. No done of a turn is called if it is interrupted by shutdown or withdrawn
// (Withdraw): the bus must deliver it again. done is called from a worker goroutine or
// from Forget, never from within Submit and never with the Runner's lock held, so it may
// call back into the Runner. Submit does not block; done may be nil.
func (r *Runner) Submit(t agate.Turn, done func()) {
	r.enqueue(t, done)
}

// Withdraw gives up the turn with this id because the event bus no longer owns it (its
// partition moved to another replica, which will deliver it again). A queued turn is
// removed from its session's line; a running turn is stopped as by a shutdown: no terminal
// event is stored or published (unless it was ending already) and it stays pending in the
// store. In both cases none of the turn's done callbacks is called, and a later Submit of
// the same turn queues it afresh. Withdraw reports whether the turn was queued or running;
// it returns false for an unknown turn and for one withdrawn already. It does not wait for
// a running turn to stop and may be called concurrently with any other method.
func (r *Runner) Withdraw(id uuid.UUID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.known[id]
	if e == nil {
		return false
	}
	delete(r.known, id)
	l := r.sessions[e.SessionID]
	if l.running == e {
		l.withdraw(errWithdrawn) // finish drops e.done: e is no longer known
		return true
	}
	l.turns = slices.DeleteFunc(l.turns, func(q *entry) bool { return q == e })
	r.queued--
	if l.running == nil && len(l.turns) == 0 {
		delete(r.sessions, e.SessionID)
		r.ready = slices.DeleteFunc(r.ready, func(id uuid.UUID) bool { return id == e.SessionID })
	}
	return true
}

// Cancel stops the session's running turn, which then ends with an assistant.final whose
// metadata.status is "cancelled". It reports whether a turn was running.
func (r *Runner) Cancel(session uuid.UUID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.sessions[session]
	if l == nil || l.running == nil {
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

// Forget drops the session's queued turns, calling their done callbacks (see Submit) before
// it returns, and stops its running one without a stored end: call it when the session is
// deleted.
func (r *Runner) Forget(session uuid.UUID) {
	var done []func()
	defer func() {
		for _, f := range done {
			f()
		}
	}()
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.sessions[session]
	if l == nil {
		return
	}
	for _, e := range l.turns {
		delete(r.known, e.ID)
		done = append(done, e.done...)
	}
	r.queued -= len(l.turns)
	l.turns = nil
	if l.running != nil {
		l.cancel(errSessionDeleted)
		return
	}
	delete(r.sessions, session)
	r.ready = slices.DeleteFunc(r.ready, func(id uuid.UUID) bool { return id == session })
}

// Queued returns the number of turns queued or running; a withdrawn running turn counts
// until it has stopped.
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

// enqueue adds t to its session's line. For a turn already queued or running it only adds
// done (if not nil) to that turn's callbacks.
func (r *Runner) enqueue(t agate.Turn, done func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.known[t.ID]; e != nil {
		if done != nil {
			e.done = append(e.done, done)
		}
		return
	}
	e := &entry{Turn: t}
	if done != nil {
		e.done = []func(){done}
	}
	r.known[t.ID] = e
	l := r.sessions[t.SessionID]
	if l == nil {
		l = &line{}
		r.sessions[t.SessionID] = l
	}
	l.turns = append(l.turns, e)
	r.queued++
	if l.running == nil && len(l.turns) == 1 {
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
		e, turnCtx, stop, ok := r.next(ctx, hard)
		if !ok {
			return
		}
		over := r.run(turnCtx, e.Turn, stop)
		for _, done := range r.finish(e, over) {
			done()
		}
	}
}

// next blocks until a turn may start and marks its session running. The turn runs under
// ctx; stop is closed when the turn must stop without an end (shutdown or Withdraw), and
// then context.Cause(ctx) is errShutdown or errWithdrawn unless ctx was cancelled before.
func (r *Runner) next(ctx, hard context.Context) (e *entry, turnCtx context.Context, stop <-chan struct{}, ok bool) {
	for {
		if ctx.Err() != nil {
			return nil, nil, nil, false
		}
		r.mu.Lock()
		if len(r.ready) > 0 {
			id := r.ready[0]
			r.ready = r.ready[1:]
			l := r.sessions[id]
			e := l.turns[0]
			l.turns = l.turns[1:]
			l.running = e
			owned, withdraw := context.WithCancelCause(hard)
			turnCtx, cancel := context.WithCancelCause(owned)
			l.cancel, l.withdraw = cancel, withdraw
			if len(r.ready) > 0 {
				r.poke()
			}
			r.mu.Unlock()
			return e, turnCtx, owned.Done(), true
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, nil, nil, false
		case <-r.wake:
		}
	}
}

// finish marks e's session idle and schedules its next turn. It returns e's done callbacks
// if e is over and was not withdrawn, for the caller to call once the lock is released.
func (r *Runner) finish(e *entry, over bool) []func() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queued--
	owned := r.known[e.ID] == e // else Withdraw dropped it (and maybe e was submitted again)
	if owned {
		delete(r.known, e.ID)
	}
	l := r.sessions[e.SessionID]
	l.cancel(nil)
	l.withdraw(nil)
	l.running, l.cancel, l.withdraw = nil, nil, nil
	if len(l.turns) == 0 { // also when Forget emptied it
		delete(r.sessions, e.SessionID)
	} else {
		r.ready = append(r.ready, e.SessionID)
		r.poke()
	}
	if over && owned {
		return e.done
	}
	return nil
}

// run gives one turn its reply. It ends the turn with exactly one terminal event unless
// the turn is interrupted (shutdown or Withdraw, which close stop), and reports whether the
// turn is over (false: it must run again, after a restart or on another replica). A turn
// that panics is over unless it was interrupted: running it again would likely panic again.
func (r *Runner) run(ctx context.Context, t agate.Turn, stop <-chan struct{}) (over bool) {
	log := r.log.With("session_id", t.SessionID, "turn", t.ID, "tenant", t.Tenant)
	if r.cfg.External {
		// The bus delivers at least once: a turn that ended on some replica is not run again.
		finished, err := r.store.Finished(ctx, t.ID)
		if err != nil && !interrupted(ctx) {
			log.Warn("cannot tell whether a delivered turn ran already; running it", "err", err)
		}
		if finished {
			log.Info("turn delivered again after it finished; skipped")
			return true
		}
	}
	if interrupted(ctx) { // before it started: nothing to end
		log.Info("turn interrupted before it started; it will run again")
		return false
	}
	begin := time.Now()
	tr := &turnRun{Runner: r, t: t, log: log, stop: stop}
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		log.Error("turn panicked", "panic", p, "stack", string(debug.Stack()))
		if interrupted(ctx) {
			over = false
			return
		}
		defer func() { // ending it may panic too (a Publisher that panics on every final)
			if p := recover(); p != nil {
				log.Error("ending a panicked turn panicked", "panic", p, "stack", string(debug.Stack()))
				over = !tr.stopped()
			}
		}()
		tr.end(ctx, agate.Reply{}, agate.Errorf(agate.EInternal, "The gateway hit an internal error while answering; please retry."))
		// Over unless storing the end was given up on because the turn was interrupted
		// meanwhile. A turn that panicked after its terminal event was sent (tr.done) is
		// over too: its end is stored, or it would likely panic again.
		over = tr.stored || !tr.stopped()
	}()
	reply, err := tr.generate(ctx)
	if err != nil && interrupted(ctx) {
		if context.Cause(ctx) == errWithdrawn {
			log.Info("turn withdrawn; it will run where the bus delivers it next")
		} else {
			log.Info("turn interrupted by shutdown; it will run again on restart")
		}
		return false
	}
	tr.end(ctx, reply, err)
	log.Info("turn finished", "duration", time.Since(begin), "code", agate.ErrorCode(err))
	return tr.stored
}

// turnRun is the state of one turn as it runs.
type turnRun struct {
	*Runner
	t      agate.Turn
	log    *slog.Logger
	stop   <-chan struct{} // closed when no one waits for the turn: shutdown past its grace, or Withdraw
	base   int64           // seq of the last persisted event, for ephemeral events
	text   string          // streamed so far
	done   bool            // the terminal event was sent
	stored bool            // the turn is over: its terminal event is stored, or its session is gone
}

// stopped reports whether tr.stop is closed.
func (tr *turnRun) stopped() bool {
	select {
	case <-tr.stop:
		return true
	default:
		return false
	}
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
	system := tr.cfg.SystemPrompt
	if tr.cfg.SystemPromptFor != nil {
		system = cmp.Or(tr.cfg.SystemPromptFor(tr.t.Tenant), system)
	}
	req := prompt.Build(prompt.Input{
		System: system, History: history, Budget: tr.cfg.ContextTokens,
		Model: tr.cfg.Model, MaxTokens: tr.cfg.MaxTokens,
	})
	if tr.cfg.Tools != nil {
		req.Tools = tr.cfg.Tools.Offer(ctx, tr.t)
	}
	if err := tr.persist(ctx, tr.event(agate.TypeThinking, "", map[string]any{"messages": len(req.Messages)})); err != nil {
		return agate.Reply{}, fmt.Errorf("record thinking: %w", err)
	}

	var total agate.Usage
	for round := 0; ; round++ {
		if round == tr.cfg.MaxToolRounds {
			// Enough tools: the model answers with what it has. The tools stay declared
			// (providers refuse tool results without them), but may not be called.
			req.ToolChoice = "none"
		}
		reply, err := tr.call(ctx, req)
		total.PromptTokens += reply.Usage.PromptTokens
		total.CompletionTokens += reply.Usage.CompletionTokens
		total.TotalTokens += reply.Usage.TotalTokens
		if err != nil || len(reply.ToolCalls) == 0 || len(req.Tools) == 0 || req.ToolChoice == "none" {
			if round > 0 {
				reply.Usage = total
				reply.Text = tr.text // what every round streamed, as the stream showed it
			}
			return reply, err
		}
		outcomes, err := tr.useTools(ctx, reply.ToolCalls)
		if err != nil {
			return reply, err
		}
		req.Messages = append(req.Messages, agate.Message{Role: agate.RoleAssistant, Content: reply.Text, ToolCalls: reply.ToolCalls})
		for i, c := range reply.ToolCalls {
			req.Messages = append(req.Messages, agate.Message{Role: "tool", ToolCallID: c.ID, Content: outcomes[i].Text})
		}
	}
}

// call makes one model call: admitted (policy, budget), streamed to the subscribers,
// settled with what it used.
func (tr *turnRun) call(ctx context.Context, req agate.ModelRequest) (agate.Reply, error) {
	settle := func(int64) {}
	if tr.cfg.Admit != nil {
		s, err := tr.cfg.Admit(ctx, tr.t, &req)
		if err != nil {
			return agate.Reply{}, err
		}
		settle = s
	}
	settled := false
	defer func() {
		if !settled { // the model call panicked: give the reservation back
			settle(0)
		}
	}()
	mctx, cancel := context.WithTimeout(ctx, tr.cfg.TurnTimeout)
	defer cancel()
	before := len(tr.text)
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
		reply.Text = tr.text[before:]
	}
	settled = true
	settle(prompt.Used(req, reply, tr.text[before:]))
	return reply, err
}

// useTools runs a model's tool calls: a tool.start event for each, the calls at once (at
// most Config.ToolParallel), then a tool.result event for each, in the model's order. It
// fails only when the events cannot be stored.
func (tr *turnRun) useTools(ctx context.Context, calls []agate.ToolCall) ([]ToolOutcome, error) {
	plans := make([]ToolPlan, len(calls))
	for i, c := range calls {
		if i >= maxCallsAtOnce {
			plans[i] = ToolPlan{Outcome: &ToolOutcome{Status: ToolError,
				Text: fmt.Sprintf("Not run: at most %d tool calls are made at once; call it again.", maxCallsAtOnce)}}
			continue
		}
		plans[i] = tr.cfg.Tools.Plan(ctx, tr.t, c)
		if plans[i].Release != nil {
			defer plans[i].Release()
		}
	}
	starts := make([]agate.Event, len(calls))
	for i, c := range calls {
		meta := map[string]any{"tool": c.Name, "call_id": c.ID, "arguments": c.Arguments}
		if r := plans[i].Request; r != nil {
			meta["request"], meta["traceparent"] = r, plans[i].Traceparent // leaves for executors with the start
		}
		ev := tr.event(agate.TypeToolStart, "", meta)
		ev.Role = "tool"
		starts[i] = ev
	}
	if err := tr.persistAll(ctx, starts); err != nil {
		return nil, fmt.Errorf("record tool calls: %w", err)
	}
	outcomes := make([]ToolOutcome, len(calls))
	sem := make(chan struct{}, tr.cfg.ToolParallel)
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Go(func() {
			if plans[i].Request == nil { // a call sent to executors only waits: it takes no slot
				sem <- struct{}{}
				defer func() { <-sem }()
			}
			defer func() {
				if p := recover(); p != nil {
					tr.log.Error("tool call panicked", "tool", c.Name, "panic", p, "stack", string(debug.Stack()))
					outcomes[i] = ToolOutcome{Status: ToolError, Text: "The tool failed with an internal error."}
				}
			}()
			if o := plans[i].Outcome; o != nil {
				outcomes[i] = *o
				return
			}
			outcomes[i] = tr.cfg.Tools.Call(ctx, tr.t, c, plans[i])
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		// Cancelled, withdrawn or shutting down: the calls were cut short, and their
		// errors are not results; the turn ends (or runs again) without them.
		return nil, err
	}
	results := make([]agate.Event, len(calls))
	for i, c := range calls {
		ev := tr.event(agate.TypeToolResult, outcomes[i].Text, map[string]any{
			"tool": c.Name, "call_id": c.ID, "status": outcomes[i].Status, "truncated": outcomes[i].Truncated})
		ev.Role = "tool"
		results[i] = ev
	}
	if err := tr.persistAll(ctx, results); err != nil {
		return nil, fmt.Errorf("record tool results: %w", err)
	}
	return outcomes, nil
}

// maxCallsAtOnce bounds the tool calls of one model message that are run; the rest are
// answered with an error the model can act on.
const maxCallsAtOnce = 16

// persistAll appends evs in one transaction and publishes them.
func (tr *turnRun) persistAll(ctx context.Context, evs []agate.Event) error {
	stored, err := tr.store.Append(context.WithoutCancel(ctx), nil, evs...)
	if err != nil {
		return err
	}
	for _, ev := range stored {
		tr.pub.Publish(ev)
	}
	tr.base = stored[len(stored)-1].Seq
	return nil
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
// trying (the session's next turn waits), so the turn ends exactly once; on shutdown or
// Withdraw (tr.stop) it gives up and the turn, still pending, runs again after the restart
// or where the bus delivers it next. If the session was
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
		case <-tr.stop:
			return
		}
	}
}
