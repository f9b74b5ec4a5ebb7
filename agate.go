// Package agate holds the domain types of the Agate gateway and its error codes.
// It imports nothing of the project; every other package imports it.
package agate

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Version is the event envelope version, compatible with SomaAgent01 clients.
const Version = "sa01-v1"

// Principal is who is calling: resolved by authentication, carried in the request context.
type Principal struct {
	Tenant  string   `json:"tenant"`
	Subject string   `json:"subject"`
	Scopes  []string `json:"scopes,omitempty"`
	// Via says how the caller proved who it is: ViaAnonymous, ViaJWT or ViaAPIKey.
	Via string `json:"via,omitempty"`
	// KeyID is the API key's id when Via is ViaAPIKey.
	KeyID string `json:"key_id,omitempty"`
}

// How a Principal was authenticated.
const (
	ViaAnonymous = "anonymous"
	ViaJWT       = "jwt"
	ViaAPIKey    = "api_key"
)

// ScopeAdmin is the scope of a tenant's administrators: its API keys, its settings, all
// its sessions.
const ScopeAdmin = "admin"

// ScopeOperator is the scope of the gateway's operators: routes that show every tenant's
// state (dead letters, circuit breakers).
const ScopeOperator = "operator"

// HasScope reports whether p has scope.
func (p Principal) HasScope(scope string) bool {
	for _, s := range p.Scopes {
		if s == scope {
			return true
		}
	}
	return false
}

// APIKey is a stored API key. The token a client presents is "sk_<ID>_<secret>"; only a
// salted hash of the secret is stored, and the token is shown once, when created.
type APIKey struct {
	ID         string     `json:"id"` // 16 lowercase letters and digits
	Tenant     string     `json:"tenant"`
	Label      string     `json:"label"`
	Scopes     []string   `json:"scopes"`
	Hash       string     `json:"-"` // self-describing, e.g. "pbkdf2-sha256$<iterations>$<salt b64>$<key b64>"
	CreatedBy  string     `json:"created_by"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
}

type principalKey struct{}

// NewContext returns ctx carrying p.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal in ctx, if any.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// Session is one conversation, owned by a tenant.
type Session struct {
	ID        uuid.UUID      `json:"session_id"`
	Tenant    string         `json:"tenant"`
	PersonaID string         `json:"persona_id,omitempty"`
	Subject   string         `json:"subject,omitempty"`
	Title     string         `json:"title,omitempty"`
	Metadata  map[string]any `json:"metadata,omitempty"`
	LastSeq   int64          `json:"last_seq"`
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
}

// TitleRunes bounds a session title.
const TitleRunes = 80

// Title is the title a session gets from its first user message: one line of at most
// TitleRunes runes. Every store applies it, so listings read the same on each backend.
func Title(message string) string {
	t := strings.Join(strings.Fields(message), " ")
	if r := []rune(t); len(r) > TitleRunes {
		t = strings.TrimSpace(string(r[:TitleRunes]))
	}
	return t
}

// Roles of an event's author.
const (
	RoleUser      = "user"
	RoleAssistant = "assistant"
	RoleTool      = "tool"
	RoleSystem    = "system"
)

// Event types. Every event is persisted with a per-session sequence number except
// assistant.stream, which is only streamed live and carries the seq of the last persisted
// event (the final reply holds the whole text).
const (
	TypeUserMessage = "user.message"
	TypeStarted     = "assistant.started"
	TypeThinking    = "assistant.thinking"
	TypeStream      = "assistant.stream"
	TypeFinal       = "assistant.final"
	TypeToolStart   = "tool.start"
	TypeToolResult  = "tool.result"
	TypeContext     = "context.update"
	TypeError       = "error"
)

// Terminal reports whether an event of type t ends a turn.
func Terminal(t string) bool { return t == TypeFinal || t == TypeError }

// Ephemeral reports whether events of type t are streamed but never stored.
func Ephemeral(t string) bool { return t == TypeStream }

// Event is the sa01-v1 envelope: what SSE, WebSocket and Kafka carry and what the store keeps.
//
// For persisted events Seq is the event's own gap-free position in its session (from 1).
// For ephemeral events Seq is the last persisted seq and Offset the length in bytes (UTF-8)
// of the cumulative Message, so that a resuming client can be sent exactly what it missed.
type Event struct {
	EventID   uuid.UUID      `json:"event_id"`
	Seq       int64          `json:"seq"`
	Offset    int            `json:"offset,omitempty"`
	SessionID uuid.UUID      `json:"session_id"`
	PersonaID string         `json:"persona_id,omitempty"`
	Role      string         `json:"role"`
	Type      string         `json:"type"`
	Message   string         `json:"message"`
	Delta     string         `json:"delta,omitempty"`
	Metadata  map[string]any `json:"metadata"`
	Version   string         `json:"version"`
	CreatedAt time.Time      `json:"created_at"`
}

// Status values of a terminal event's metadata.status.
const (
	StatusOK        = "ok"
	StatusError     = "error"
	StatusCancelled = "cancelled"
)

// Inbound is a user message accepted for a turn.
type Inbound struct {
	Tenant         string
	Subject        string
	SessionID      uuid.UUID // uuid.Nil creates a new session
	PersonaID      string
	Message        string
	Attachments    []string
	Metadata       map[string]any
	IdempotencyKey string // optional; scoped to the tenant
	RequestHash    string // fingerprint of the request, to tell a retry from a reused key
}

// Accepted is the outcome of accepting an Inbound message.
type Accepted struct {
	Turn      Turn
	Event     Event // the persisted user.message event
	Duplicate bool  // an earlier request with the same idempotency key was accepted already
}

// Turn is one accepted user message waiting for, or being given, its reply.
// ID is the event id of the user message that started it.
type Turn struct {
	ID        uuid.UUID `json:"turn_id"`
	SessionID uuid.UUID `json:"session_id"`
	Tenant    string    `json:"tenant"`
	PersonaID string    `json:"persona_id,omitempty"`
	Seq       int64     `json:"seq"` // seq of the user message
}

// Event-bus topics (DESIGN.md §5), before a deployment's prefix is applied.
const (
	TopicInbound  = "conversation.inbound"  // accepted turns: key session id, payload a Turn as JSON
	TopicOutbound = "conversation.outbound" // stored events: key session id, payload the envelope
)

// HeaderOrigin names the bus record header that holds the id of the replica that wrote the
// record, so that a replica can skip its own records when they come back.
const HeaderOrigin = "origin"

// OutboxRecord is a record of the transactional outbox: written in the same transaction as
// the state it announces, then published to the event bus by the relay.
type OutboxRecord struct {
	ID      int64  // increasing in write order
	Topic   string // unprefixed, e.g. TopicOutbound
	Key     string // partition key: the session id
	Payload []byte // JSON
	Headers map[string]string
}

// DeadLetter is a bus record that a consumer could not handle, kept for inspection and
// reprocessing.
type DeadLetter struct {
	ID        int64  // assigned by the store, increasing
	Topic     string // the (full) topic it was consumed from
	Partition int32
	Offset    int64
	Key       []byte
	Payload   []byte // the raw record value; need not be valid JSON
	Headers   map[string]string
	Error     string
	CreatedAt time.Time
}

// Message is one chat message sent to a model, in the canonical form every provider
// adapter maps to and from.
type Message struct {
	Role    string `json:"role"` // system, user, assistant or tool
	Content string `json:"content"`
	// ToolCalls are the calls an assistant message made (Content may then be empty).
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	// ToolCallID names the call a tool message answers.
	ToolCallID string `json:"tool_call_id,omitempty"`
}

// Tool is a function a model may call.
type Tool struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"` // JSON Schema of the arguments
	Strict      bool            `json:"strict,omitempty"`     // arguments must match Parameters exactly (OpenAI structured outputs)
}

// ToolCall is a model's call of a tool.
type ToolCall struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Arguments string `json:"arguments"` // JSON text, as the model wrote it
}

// ModelRequest is what a turn asks of a model.
type ModelRequest struct {
	Model       string
	Messages    []Message
	MaxTokens   int      // 0: the provider's default
	Temperature *float64 // nil: the provider's default
	TopP        *float64 // nil: the provider's default
	Stop        []string
	Tools       []Tool
	// ToolChoice is "auto", "none", "required", or the name of the one tool to call;
	// "" is the provider's default.
	ToolChoice string
	// ResponseFormat is OpenAI's response_format object, passed on as it is; nil for text.
	ResponseFormat json.RawMessage
	// Extra holds request fields Agate does not model, passed through unchanged to
	// OpenAI-compatible providers and ignored by others.
	Extra map[string]json.RawMessage
}

// Delta is a piece of a streamed reply: text, or a piece of a tool call.
type Delta struct {
	Text     string
	ToolCall *ToolCallDelta
}

// ToolCallDelta is a piece of a streamed tool call. Index orders the calls of one reply;
// the first piece of a call carries its ID and Name, later ones append to Arguments.
type ToolCallDelta struct {
	Index     int
	ID        string
	Name      string
	Arguments string
}

// Usage counts tokens of one model call.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// Finish reasons of a Reply, in OpenAI's words; adapters map their provider's to these.
const (
	FinishStop      = "stop"
	FinishLength    = "length"
	FinishToolCalls = "tool_calls"
	FinishFilter    = "content_filter"
)

// Reply is a model's complete answer.
type Reply struct {
	Text         string
	ToolCalls    []ToolCall // assembled in Index order
	Model        string
	FinishReason string
	Usage        Usage
}

// Tuple is a relationship of the authorization model (conf/authz.fga): User has Relation
// to Object, e.g. {"user:alice", "owner", "session:6f1c…"} or {"tenant:acme#member",
// "viewer", "session:…"}.
type Tuple struct {
	User     string `json:"user"`
	Relation string `json:"relation"`
	Object   string `json:"object"`
}

// PolicyInput is what a policy decision (OPA, package agate) is asked about.
type PolicyInput struct {
	Principal Principal      `json:"principal"`
	Tenant    string         `json:"tenant"`
	Action    string         `json:"action"`   // conversation.send, model.use, tool.execute, settings.update, admin.<route>
	Resource  map[string]any `json:"resource"` // what the action is on: {"type": "session", "id": …}, {"type": "model", "name": …}
	Context   map[string]any `json:"context"`  // the request: tenant settings (routing allow/deny), model, tool, …
	Usage     map[string]any `json:"usage"`    // tokens spent today, budget, …
}

// PolicyDecision is a policy's answer. Reason says why, for a refusal's message.
type PolicyDecision struct {
	Allow  bool   `json:"allow"`
	Reason string `json:"reason,omitempty"`
}

// BudgetKey names one token budget counter: a tenant's (Persona "") or one persona's,
// for one UTC day ("2006-01-02").
type BudgetKey struct {
	Tenant  string
	Persona string
	Day     string
}

// TokenUsage is a budget counter: tokens reserved by calls in flight and spent by calls done.
type TokenUsage struct {
	Reserved int64
	Spent    int64
}

// Topics of tools run by executors (agate executor), before a deployment's prefix.
const (
	TopicToolRequests = "tool.requests" // key session id, payload a ToolRequest
	TopicToolResults  = "tool.results"  // key session id, payload a ToolResult
)

// ToolRequest asks executors to run a tool call of a turn.
type ToolRequest struct {
	RequestID uuid.UUID       `json:"event_id"` // unique per call; a ToolResult names it
	SessionID uuid.UUID       `json:"session_id"`
	Tenant    string          `json:"tenant"`
	ToolName  string          `json:"tool_name"`
	Args      json.RawMessage `json:"args"`
	Metadata  map[string]any  `json:"metadata,omitempty"` // turn_id, call_id
	Deadline  time.Time       `json:"deadline"`           // no one waits for the result after it
}

// ToolResult is an executor's answer to a ToolRequest.
type ToolResult struct {
	RequestID uuid.UUID `json:"request_id"`
	SessionID uuid.UUID `json:"session_id"`
	ToolName  string    `json:"tool_name"`
	Status    string    `json:"status"` // "ok" or "error"
	Text      string    `json:"text"`
	Truncated bool      `json:"truncated,omitempty"`
}

// DispatchOf returns the outbox record of the tool request a tool.start event carries in
// its metadata "request" (a ToolRequest, for executors): topic TopicToolRequests, key the
// request id, headers "traceparent" when the metadata has one. A store with its bus on
// writes it in the transaction that stores the event, so a call sent to executors leaves
// exactly when its start is recorded.
func DispatchOf(ev Event) (OutboxRecord, bool) {
	if ev.Type != TypeToolStart || ev.Metadata["request"] == nil {
		return OutboxRecord{}, false
	}
	payload, err := json.Marshal(ev.Metadata["request"])
	if err != nil {
		return OutboxRecord{}, false
	}
	var req ToolRequest
	if json.Unmarshal(payload, &req) != nil || req.RequestID == uuid.Nil {
		return OutboxRecord{}, false
	}
	rec := OutboxRecord{Topic: TopicToolRequests, Key: req.RequestID.String(), Payload: payload, Headers: map[string]string{}}
	if tp, ok := ev.Metadata["traceparent"].(string); ok && tp != "" {
		rec.Headers["traceparent"] = tp
	}
	return rec, true
}
