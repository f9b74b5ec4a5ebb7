// Package openai is a client for OpenAI-compatible Chat Completions APIs: OpenAI itself,
// Azure OpenAI deployments and the many servers that speak its wire format (vLLM,
// llama.cpp, Ollama, LiteLLM, OpenRouter, …). It streams replies over server-sent events,
// tool calls included, and implements turn.Model.
package openai

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/internal/httpc"
	"github.com/agate-gw/agate/llm/internal/sse"
	"github.com/google/uuid"
)

// Defaults of Config.
const (
	DefaultBaseURL     = "https://api.openai.com/v1"
	DefaultTimeout     = 120 * time.Second
	DefaultIdleTimeout = 60 * time.Second
)

const (
	maxEventSize = 1 << 20  // one SSE line or event
	maxJSONSize  = 16 << 20 // a non-streaming reply
	maxErrorBody = 64 << 10 // an HTTP error body
)

// Config configures a Client. The zero value talks to OpenAI without credentials.
type Config struct {
	// BaseURL is the API root as users paste it, such as "https://api.openai.com/v1" or
	// "http://localhost:11434/v1". Surrounding spaces, trailing slashes and a pasted
	// "/chat/completions" suffix are removed; nothing else is guessed (no "/v1" is added).
	// A query string (Azure's "?api-version=") is kept. Default DefaultBaseURL.
	BaseURL string
	// APIKey is sent as "Authorization: Bearer <APIKey>" when not empty. For an Azure
	// OpenAI deployment (a BaseURL whose host ends in "openai.azure.com" and whose query
	// has "api-version") it is sent as "api-key: <APIKey>" instead, as Azure expects.
	APIKey string
	// Model is used when a request names no model.
	Model string
	// HTTPClient sends the requests. Default: a client like http.DefaultTransport's whose
	// wait for response headers is bounded by IdleTimeout, and that follows only the
	// redirects that keep the POST method. A client with its own Timeout
	// cuts long streams short; prefer Config.Timeout.
	HTTPClient *http.Client
	// Timeout bounds a whole request, from sending it to the end of the stream.
	// Default DefaultTimeout.
	Timeout time.Duration
	// IdleTimeout bounds each wait for more of the response body once the headers have
	// arrived: the longest gap between two stream chunks. Time spent in emit does not
	// count. Default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Headers are added to every request, after and in place of the default ones of the
	// same name (for example "OpenAI-Organization", or an "Authorization" with a Microsoft
	// Entra token for Azure).
	Headers map[string]string
	// MaxTokensField names the request field that carries ModelRequest.MaxTokens:
	// "max_tokens" (the default, understood by nearly every compatible server) or
	// "max_completion_tokens" (required by OpenAI's reasoning models, which refuse
	// "max_tokens").
	MaxTokensField string
}

// Client calls an OpenAI-compatible Chat Completions endpoint. It is safe for concurrent use.
type Client struct {
	endpoint  string
	cfgErr    error // a Config that cannot be used; returned by every Generate
	key       string
	azure     bool // send key as "api-key"
	model     string
	hc        *http.Client
	timeout   time.Duration
	idle      time.Duration
	headers   http.Header
	maxTokens string // the request field of ModelRequest.MaxTokens
}

// New returns a client for cfg. It does no I/O; an unusable BaseURL or MaxTokensField
// is reported by Generate.
func New(cfg Config) *Client {
	c := &Client{
		key:       cfg.APIKey,
		model:     cfg.Model,
		hc:        cfg.HTTPClient,
		timeout:   cfg.Timeout,
		idle:      cfg.IdleTimeout,
		headers:   make(http.Header, len(cfg.Headers)),
		maxTokens: cfg.MaxTokensField,
	}
	if c.idle <= 0 {
		c.idle = DefaultIdleTimeout
	}
	if c.hc == nil {
		c.hc = httpc.New(c.idle)
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	for k, v := range cfg.Headers {
		c.headers.Set(k, v)
	}
	c.endpoint, c.azure, c.cfgErr = endpoint(cfg.BaseURL)
	switch c.maxTokens {
	case "":
		c.maxTokens = "max_tokens"
	case "max_tokens", "max_completion_tokens":
	default:
		if c.cfgErr == nil {
			c.cfgErr = agate.Errorf(agate.EUpstream,
				"The LLM max tokens field must be max_tokens or max_completion_tokens, not %q.", c.maxTokens)
		}
	}
	return c
}

// endpoint returns the chat completions URL of base, and whether it is an Azure OpenAI
// deployment (host *openai.azure.com with an api-version query).
func endpoint(base string) (string, bool, error) {
	base = strings.TrimSpace(base)
	if base == "" {
		base = DefaultBaseURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The URL is not quoted: it could hold credentials.
		return "", false, agate.Errorf(agate.EUpstream,
			"The LLM base URL is not a valid http(s) URL; check LLM_BASE_URL (for example https://api.openai.com/v1).")
	}
	p := strings.TrimRight(u.Path, "/")
	p = strings.TrimSuffix(p, "/chat/completions")
	p = strings.TrimRight(p, "/")
	u.Path, u.RawPath, u.Fragment, u.RawFragment = p+"/chat/completions", "", "", ""
	azure := strings.HasSuffix(strings.ToLower(u.Hostname()), "openai.azure.com") && u.Query().Has("api-version")
	return u.String(), azure, nil
}

// Wire format of a reply.

// completion is a "chat.completion.chunk" or a "chat.completion"; it also catches the
// error shapes servers send with status 200: {"error":{…}} / {"error":"…"} (OpenAI,
// llama.cpp, LiteLLM) and {"object":"error","message":…} (vLLM).
type completion struct {
	Object  string          `json:"object"`
	Model   string          `json:"model"`
	Choices []choice        `json:"choices"`
	Usage   *agate.Usage    `json:"usage"`
	Error   json.RawMessage `json:"error"`
	Message json.RawMessage `json:"message"` // vLLM errors only
}

type choice struct {
	Index        int     `json:"index"`
	Delta        content `json:"delta"`   // streaming
	Message      content `json:"message"` // non-streaming
	FinishReason *string `json:"finish_reason"`
}

type content struct {
	Content      string          `json:"content"`
	Refusal      string          `json:"refusal"`
	ToolCalls    []toolCallPiece `json:"tool_calls"`
	FunctionCall *functionPiece  `json:"function_call"` // the legacy single call
}

// text is what the model said: its content, or its refusal when it refused.
func (c content) text() string { return c.Content + c.Refusal }

// failed reports whether c is an error object, and its message.
func (c *completion) failed() (string, bool) {
	if len(c.Error) > 0 && string(c.Error) != "null" {
		return errorMessage(c.Error), true
	}
	if c.Object == "error" {
		return errorMessage(c.Message), true
	}
	return "", false
}

// Generate sends req and streams the reply to emit, one call per non-empty piece of text
// and one per piece of a tool call (a nil emit discards them). It returns the whole
// reply: its text, its tool calls, the model that wrote it (as the provider names it),
// the finish reason (agate.FinishStop, agate.FinishToolCalls, …) and the token usage
// when the provider reports it.
//
// Tool-call pieces carry the call's position in Reply.ToolCalls as their Index (calls in
// the order they began; OpenAI's own index for servers that number from 0), the call's ID
// and Name on the first piece that tells them, and the next part of its Arguments.
// Pieces are matched to calls by their call's id, else by their "index", else (servers
// that omit both) to the call of the previous piece; a piece with a new id and a function
// name begins a new call even at a used index. So interleaved calls are assembled
// correctly and no piece is dropped. A legacy "function_call" is reported as a tool call
// without an ID. The finish reasons "function_call", and "stop" on a reply with tool
// calls, are reported as agate.FinishToolCalls.
//
// The fields of req are sent in OpenAI's shape. req.Extra adds its members to the
// top-level request object verbatim, but the adapter's own fields take precedence: an
// Extra member is dropped when the adapter writes a member of that name itself (model,
// messages, stream and stream_options always; the token limit, temperature, top_p, stop,
// tools, tool_choice and response_format when req sets them). Token limits are the one
// exception, since servers refuse two: an Extra "max_completion_tokens" is sent as it is
// and the adapter then sends no limit of its own; otherwise, when req.MaxTokens is set,
// the adapter's limit replaces both "max_tokens" and "max_completion_tokens" of Extra.
//
// If emit returns an error, Generate stops and returns that error. If ctx is done, it
// returns ctx.Err(). Any other failure is an *agate.Error whose message can be shown to
// users: agate.EUpstreamAuth (HTTP 401/403), agate.EUpstreamRate (429),
// agate.EUpstreamTimeout (408/504, Config.Timeout or Config.IdleTimeout exceeded),
// agate.EStreamTruncated (the connection failed or the stream ended after the response
// began, before "data: [DONE]" and before any choice had a finish_reason), agate.EInvalid
// (a request that cannot be encoded) or agate.EUpstream (anything else, including an
// error object in the stream and a provider that could not be reached: a connection that
// failed before any response, which is safe to retry). For 429, and 503 with a
// Retry-After, agate.RetryAfter(err) is the wait the provider asked for ("retry-after-ms"
// or "Retry-After"). A stream that ends or stalls without "[DONE]" after a finish_reason
// was seen is accepted: the reply is complete, only a usage chunk may be missing. On
// error the returned Reply holds what arrived before it, tool calls included.
//
// A server that ignores "stream": true and answers with an application/json
// "chat.completion" object works too: its content is emitted as one piece, and each of
// its tool calls as one piece.
func (c *Client) Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error) {
	if err := ctx.Err(); err != nil {
		return agate.Reply{}, err
	}
	if emit == nil {
		emit = discard
	}
	if c.cfgErr != nil {
		return agate.Reply{}, c.cfgErr
	}
	model := req.Model
	if model == "" {
		model = c.model
	}
	body, err := c.body(model, req)
	if err != nil {
		return agate.Reply{}, err
	}

	// reqCtx is cancelled by the caller (ctx), by Timeout (cause errTimeout) or by
	// IdleTimeout (cause errIdle); stream.cancelled tells them apart.
	reqCtx, cancelTimeout := context.WithTimeoutCause(ctx, c.timeout, errTimeout)
	defer cancelTimeout()
	reqCtx, cancelIdle := context.WithCancelCause(reqCtx)
	defer cancelIdle(nil)

	hreq, err := http.NewRequestWithContext(reqCtx, http.MethodPost, c.endpoint, bytes.NewReader(body))
	if err != nil {
		return agate.Reply{}, agate.Wrap(agate.EUpstream, err, "The request to the LLM provider could not be built; check LLM_BASE_URL.")
	}
	switch {
	case c.key == "":
	case c.azure:
		hreq.Header.Set("api-key", c.key)
	default:
		hreq.Header.Set("Authorization", "Bearer "+c.key)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "text/event-stream")
	for k, v := range c.headers {
		hreq.Header[k] = v
	}

	s := &stream{c: c, ctx: ctx, reqCtx: reqCtx, emit: emit, calls: newToolCalls()}
	s.reply.Model = model
	resp, err := c.hc.Do(hreq)
	if err != nil {
		return agate.Reply{}, s.failBeforeResponse(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return agate.Reply{}, c.statusError(resp, s)
	}
	idle := time.AfterFunc(c.idle, func() { cancelIdle(errIdle) })
	defer idle.Stop()
	idle.Stop() // armed only while a read waits; see idleReader
	r := &idleReader{r: resp.Body, t: idle, d: c.idle}
	switch mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt {
	case "application/json":
		return s.readJSON(r)
	case "text/html":
		return agate.Reply{}, agate.Errorf(agate.EUpstream,
			"The LLM base URL answered with a web page, not the Chat Completions API. Check LLM_BASE_URL (it usually ends in /v1).")
	}
	return s.readSSE(r)
}

func discard(agate.Delta) error { return nil }

// idleReader arms t for d during each Read, so that a wait for data longer than d fires it.
type idleReader struct {
	r io.Reader
	t *time.Timer
	d time.Duration
}

func (ir *idleReader) Read(p []byte) (int, error) {
	ir.t.Reset(ir.d)
	n, err := ir.r.Read(p)
	ir.t.Stop()
	return n, err
}

// stream is the state of one Generate call.
type stream struct {
	c         *Client
	ctx       context.Context // the caller's
	reqCtx    context.Context // the request's, with Timeout and IdleTimeout
	emit      func(agate.Delta) error
	reply     agate.Reply
	text      strings.Builder
	calls     *toolCalls
	sawFinish bool // a choice had a finish_reason
}

// readSSE reads a chat.completion.chunk stream until "data: [DONE]".
func (s *stream) readSSE(r io.Reader) (agate.Reply, error) {
	dec := sse.NewDecoder(r, maxEventSize)
	for {
		ev, err := dec.Next()
		if err != nil {
			if errors.Is(err, sse.ErrTooLarge) {
				return s.result(agate.Wrap(agate.EUpstream, err, "The LLM provider sent a stream event over 1 MiB; the reply was abandoned."))
			}
			return s.result(s.endOfStream(err))
		}
		if strings.TrimSpace(ev.Data) == "[DONE]" {
			return s.result(nil)
		}
		var ch completion
		if err := json.Unmarshal([]byte(ev.Data), &ch); err != nil {
			if ev.Type == "error" { // a plain-text error event
				return s.result(s.streamError(ev.Data))
			}
			return s.result(agate.Wrap(agate.EUpstream, err, "The LLM provider sent a malformed stream chunk."))
		}
		if msg, ok := ch.failed(); ok {
			return s.result(s.streamError(msg))
		}
		if err := s.add(&ch, false); err != nil {
			return s.result(err)
		}
	}
}

// readJSON reads a non-streaming "chat.completion" reply.
func (s *stream) readJSON(r io.Reader) (agate.Reply, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxJSONSize+1))
	if err != nil {
		return s.result(s.endOfStream(err))
	}
	if len(data) > maxJSONSize {
		return s.result(agate.Errorf(agate.EUpstream, "The LLM provider's reply is over 16 MiB; it was abandoned."))
	}
	var ch completion
	if err := json.Unmarshal(data, &ch); err != nil {
		return s.result(agate.Wrap(agate.EUpstream, err, "The LLM provider sent a reply that is not valid JSON."))
	}
	if msg, ok := ch.failed(); ok {
		return s.result(s.streamError(msg))
	}
	if len(ch.Choices) == 0 {
		return s.result(agate.Errorf(agate.EUpstream, "The LLM provider sent a reply without choices."))
	}
	return s.result(s.add(&ch, true))
}

// add takes in one chunk (or a whole non-streaming completion) and emits its text and
// tool-call pieces.
func (s *stream) add(ch *completion, whole bool) error {
	if ch.Model != "" {
		s.reply.Model = ch.Model
	}
	if ch.Usage != nil {
		s.reply.Usage = *ch.Usage
	}
	for _, cc := range ch.Choices {
		if cc.Index != 0 { // only one choice is requested
			continue
		}
		if cc.FinishReason != nil && *cc.FinishReason != "" {
			s.reply.FinishReason = finishReason(*cc.FinishReason)
			s.sawFinish = true
		}
		m := cc.Delta
		if whole {
			m = cc.Message
		}
		if t := m.text(); t != "" {
			s.text.WriteString(t)
			if err := s.emit(agate.Delta{Text: t}); err != nil {
				return err
			}
		}
		pieces := m.ToolCalls
		if m.FunctionCall != nil {
			zero := 0
			pieces = append(pieces, toolCallPiece{Index: &zero, Function: *m.FunctionCall})
		}
		for _, p := range pieces {
			var d *agate.ToolCallDelta
			if whole {
				d = s.calls.whole(p)
			} else {
				d = s.calls.add(p)
			}
			if d == nil {
				continue
			}
			if err := s.emit(agate.Delta{ToolCall: d}); err != nil {
				return err
			}
		}
	}
	return nil
}

// finishReason maps a finish_reason to the canonical one.
func finishReason(r string) string {
	if r == "function_call" {
		return agate.FinishToolCalls
	}
	return r
}

// result returns the reply so far with err. On success, a tool call the provider sent
// without an id (some servers do) gets one, sent as a last delta, so a client can answer
// it with a tool message.
func (s *stream) result(err error) (agate.Reply, error) {
	if err == nil {
		for i, c := range s.calls.calls {
			if c.id == "" {
				c.id = "call_" + strings.ReplaceAll(uuid.NewString(), "-", "")[:24]
				if err = s.emit(agate.Delta{ToolCall: &agate.ToolCallDelta{Index: i, ID: c.id}}); err != nil {
					break
				}
			}
		}
	}
	s.reply.Text = s.text.String()
	s.reply.ToolCalls = s.calls.result()
	if s.reply.ToolCalls != nil && s.reply.FinishReason == agate.FinishStop {
		s.reply.FinishReason = agate.FinishToolCalls
	}
	return s.reply, err
}
