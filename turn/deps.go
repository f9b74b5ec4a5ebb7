package turn

import (
	"context"
	"time"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
)

// This file declares everything the turn runner consumes. Adapters live in their own
// packages (sqlite, postgres, llm/openai, inmem, …) and are chosen in cmd/agate/wire.go.

// Sessions reads and removes sessions. All lookups are scoped to a tenant: a session of
// another tenant is reported as not found.
type Sessions interface {
	// Session returns the session, or an error with code agate.ESessionNotFound.
	Session(ctx context.Context, tenant string, id uuid.UUID) (agate.Session, error)
	// Sessions lists a tenant's sessions, most recently updated first, at most limit of them,
	// starting after the session whose id is after (uuid.Nil: from the start).
	Sessions(ctx context.Context, tenant string, after uuid.UUID, limit int) ([]agate.Session, error)
	// DeleteSession removes the session and all its events and pending turns.
	// It returns an error with code agate.ESessionNotFound if there is none.
	DeleteSession(ctx context.Context, tenant string, id uuid.UUID) error
}

// Log is the append-only event log of every session.
type Log interface {
	// Accept stores a user message in one transaction: it creates the session if in.SessionID
	// is uuid.Nil (a new random id) or does not exist yet for in.Tenant, appends the
	// user.message event and records the pending turn. With an idempotency key that was seen
	// before for the tenant it writes nothing and returns the first outcome with
	// Duplicate set, or an error with code agate.EIdempotencyReuse if in.RequestHash differs.
	// A session id that exists in another tenant gives agate.ESessionNotFound.
	Accept(ctx context.Context, in agate.Inbound) (agate.Accepted, error)
	// Append stores events at the end of their session's log, in order, assigning each its
	// Seq (gap-free, from 1 per session) and CreatedAt; EventID is assigned if nil. If the
	// event is terminal and done is not nil, the turn is marked finished in the same
	// transaction. It returns the stored events. Ephemeral events are refused (agate.EInvalid).
	Append(ctx context.Context, done *agate.Turn, events ...agate.Event) ([]agate.Event, error)
	// Events returns up to limit events of the session with Seq > after, in order.
	Events(ctx context.Context, sessionID uuid.UUID, after int64, limit int) ([]agate.Event, error)
}

// History reads the conversation as a model sees it.
type History interface {
	// Messages returns up to limit of the session's latest conversation events (user.message,
	// and assistant.final with metadata.status "ok") with Seq <= upTo, oldest first.
	Messages(ctx context.Context, sessionID uuid.UUID, upTo int64, limit int) ([]agate.Event, error)
}

// Queue lists accepted turns that have not finished, to resume them after a restart.
type Queue interface {
	// Pending returns unfinished turns in acceptance order.
	Pending(ctx context.Context) ([]agate.Turn, error)
	// Finished reports whether the turn no longer needs to run: its terminal event is
	// stored, or neither it nor its session exists (deleted). A turn delivered twice by the
	// event bus is skipped with it.
	Finished(ctx context.Context, id uuid.UUID) (bool, error)
}

// Outbox is the transactional outbox (DESIGN.md §5). A store opened with its bus enabled
// writes, in the transaction of the state they announce: for Accept, an agate.TopicOutbound
// record of the user event and then an agate.TopicInbound record of the turn (payload the
// agate.Turn as JSON); for Append, an agate.TopicOutbound record of every stored event
// (payload the stored envelope, as Events returns it). Keys are session ids; headers hold
// agate.HeaderOrigin when the store was given an origin. With the bus disabled nothing is
// written to the outbox. Deleting a session leaves its outbox records.
type Outbox interface {
	// LeaseOutbox makes holder the outbox relay until ttl from now, unless another holder's
	// lease is still live; it reports whether holder holds the lease. The holder renews it
	// by calling again before it expires.
	LeaseOutbox(ctx context.Context, holder string, ttl time.Duration) (bool, error)
	// Unsent returns up to limit records not marked sent, in write order (ID ascending).
	Unsent(ctx context.Context, limit int) ([]agate.OutboxRecord, error)
	// MarkSent marks the records sent (removes them): Unsent never returns them again.
	// Unknown ids are ignored.
	MarkSent(ctx context.Context, ids ...int64) error
	// Enqueue writes records to the outbox in one transaction, whatever the store's bus
	// setting; ID is assigned (the given one is ignored); Headers get agate.HeaderOrigin
	// when the store has an origin, unless set. For records that must leave through the
	// bus but announce no stored event, such as a tool request to executors.
	Enqueue(ctx context.Context, recs ...agate.OutboxRecord) error
}

// DeadLetters keeps bus records that consumers could not handle (the dlq table).
type DeadLetters interface {
	// AddDeadLetter stores d, assigning ID and CreatedAt. Storing the same (Topic,
	// Partition, Offset) again stores nothing and returns nil.
	AddDeadLetter(ctx context.Context, d agate.DeadLetter) error
	// DeadLetters returns up to limit dead letters of topic ("": of every topic) with
	// ID > after, oldest first.
	DeadLetters(ctx context.Context, topic string, after int64, limit int) ([]agate.DeadLetter, error)
}

// Keys stores API keys (agate.APIKey). Lookups by id are not scoped to a tenant: the id
// comes from the token, and the key says its tenant.
type Keys interface {
	// CreateAPIKey stores k. An id that exists gives agate.EInvalid.
	CreateAPIKey(ctx context.Context, k agate.APIKey) error
	// APIKey returns the key with id, revoked or not, or an error with code agate.ENotFound.
	APIKey(ctx context.Context, id string) (agate.APIKey, error)
	// APIKeys lists a tenant's keys, revoked ones included, newest first.
	APIKeys(ctx context.Context, tenant string) ([]agate.APIKey, error)
	// RevokeAPIKey marks the tenant's key revoked at at (a key revoked before keeps its
	// first time) and returns it; agate.ENotFound if the tenant has no such key.
	RevokeAPIKey(ctx context.Context, tenant, id string, at time.Time) (agate.APIKey, error)
	// TouchAPIKey sets the key's LastUsedAt to at, unless it is later already.
	TouchAPIKey(ctx context.Context, id string, at time.Time) error
}

// Ledger keeps token budget counters in the store: the budget of a gateway without Redis
// (or while Redis is down), and the record of tokens spent.
type Ledger interface {
	// ReserveTokens adds n to the counter's Reserved, atomically, if Reserved+Spent+n <=
	// limit (limit <= 0: no limit), and reports whether it did. Concurrent calls from any
	// number of processes never reserve past the limit.
	ReserveTokens(ctx context.Context, key agate.BudgetKey, n, limit int64) (bool, error)
	// SettleTokens ends a reservation of reserved tokens that used used: Reserved -=
	// reserved, Spent += used (0 used: a release). Reserved never goes below 0.
	SettleTokens(ctx context.Context, key agate.BudgetKey, reserved, used int64) error
	// TokenUsage returns the counter; zero if it was never used.
	TokenUsage(ctx context.Context, key agate.BudgetKey) (agate.TokenUsage, error)
}

// Store is all of the persistence a gateway needs; sqlite and postgres implement it and
// pass turntest.RunStoreTests.
type Store interface {
	Sessions
	Log
	History
	Queue
	Outbox
	DeadLetters
	Keys
	Ledger
	Ping(ctx context.Context) error
	Close() error
}

// Model generates one assistant message. Deltas (text, and tool-call pieces) go to emit as
// they arrive; if emit returns an error, Generate stops and returns it. On failure the
// Reply holds what was received so far and the error carries an agate code
// (agate.EUpstream, agate.EUpstreamTimeout, agate.EUpstreamAuth, agate.EUpstreamRate with
// agate.RetryAfter when the provider said, agate.EStreamTruncated, agate.EInvalid for a
// request the provider cannot take); a cancelled ctx gives ctx.Err(). Generate may be
// called concurrently.
type Model interface {
	Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error)
}

// Tool outcomes, in tool.result events' metadata.status.
const (
	ToolOK      = "ok"      // the tool ran and answered
	ToolError   = "error"   // invalid arguments, unknown tool, the tool failed or timed out
	ToolBlocked = "blocked" // authorization (OpenFGA can_use) or policy (OPA tool.execute) refused it
)

// ToolOutcome is what one tool call gave: Text goes back to the model as the tool's
// answer (a refusal or an error included, so that it can correct itself or go on).
type ToolOutcome struct {
	Status    string // ToolOK, ToolError or ToolBlocked
	Text      string
	Truncated bool // Text was cut to the result size limit
}

// ToolPlan is how a call will run, decided before its tool.start event is stored.
type ToolPlan struct {
	// Outcome, when set, answers the call without running it (invalid arguments, an
	// unknown tool, a refusal).
	Outcome *ToolOutcome
	// Request, when set, goes to executors with the tool.start event: the store sends it
	// through the outbox in the transaction that records the start (agate.DispatchOf);
	// Traceparent goes with it.
	Request     *agate.ToolRequest
	Traceparent string
	// Ticket is what Plan keeps for Call (a result to wait for); Release, if not nil, frees
	// it, whatever happens to the call.
	Ticket  any
	Release func()
}

// Tools runs the tools a model may call: the catalogue (tool.Registry) behind
// authorization and policy.
type Tools interface {
	// Offer returns the tools offered to the model in t's turns.
	Offer(ctx context.Context, t agate.Turn) []agate.Tool
	// Plan validates and authorizes one call for t and says how it runs.
	Plan(ctx context.Context, t agate.Turn, call agate.ToolCall) ToolPlan
	// Call runs a planned call (one without Outcome) after its tool.start is stored. It
	// does not fail: every outcome, a timeout included, is a ToolOutcome.
	Call(ctx context.Context, t agate.Turn, call agate.ToolCall, plan ToolPlan) ToolOutcome
}

// Publisher fans events out to the session's live subscribers. Publish must not block on
// slow subscribers.
type Publisher interface {
	Publish(ev agate.Event)
}
