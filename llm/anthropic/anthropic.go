// Package anthropic is a client for Anthropic's Messages API. It streams replies over
// server-sent events, text and tool use, and implements turn.Model.
//
// Canonical requests are mapped as follows. System messages, wherever they are, are joined
// (with a blank line) into the top-level "system" prompt. User and assistant messages become
// messages of content blocks; an assistant message's tool calls become "tool_use" blocks
// after its text, and a tool message becomes a "tool_result" block of a user message.
// Consecutive messages of the same role are merged into one, since Anthropic wants user and
// assistant to alternate, and in a user message tool results come before text. Blank text
// is left out. ToolChoice "auto", "required", "none" and a tool's name become tool_choice
// auto, any, none and tool. ModelRequest.Extra and ResponseFormat are ignored: Extra holds
// OpenAI fields, and the Messages API has no response format.
package anthropic

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/internal/httpc"
)

// Defaults of Config.
const (
	DefaultBaseURL     = "https://api.anthropic.com"
	DefaultVersion     = "2023-06-01"
	DefaultMaxTokens   = 4096
	DefaultTimeout     = 120 * time.Second
	DefaultIdleTimeout = 60 * time.Second
)

const (
	maxEventSize = 1 << 20  // one SSE line or event
	maxJSONSize  = 16 << 20 // a non-streaming reply
	maxErrorBody = 64 << 10 // an HTTP error body, a token count
)

// Config configures a Client. The zero value talks to Anthropic without credentials.
type Config struct {
	// BaseURL is the API root as users paste it, such as "https://api.anthropic.com".
	// Surrounding spaces, trailing slashes and a pasted "/v1" or "/v1/messages" suffix are
	// removed; requests go to <BaseURL>/v1/messages. Default DefaultBaseURL.
	BaseURL string
	// APIKey is sent as "x-api-key" when not empty.
	APIKey string
	// Model is used when a request names no model.
	Model string
	// Version is sent as "anthropic-version". Default DefaultVersion.
	Version string
	// MaxTokens is used when a request sets no MaxTokens (Anthropic requires a limit).
	// Default DefaultMaxTokens.
	MaxTokens int
	// HTTPClient sends the requests. Default: a client like http.DefaultTransport's whose
	// wait for response headers is bounded by IdleTimeout, and that follows only the
	// redirects that keep the POST method. A client with its own Timeout
	// cuts long streams short; prefer Config.Timeout.
	HTTPClient *http.Client
	// Timeout bounds a whole request, from sending it to the end of the stream.
	// Default DefaultTimeout.
	Timeout time.Duration
	// IdleTimeout bounds each wait for more of the response body once the headers have
	// arrived: the longest gap between two stream events (Anthropic sends "ping" events
	// while it thinks). Time spent in emit does not count. Default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Headers are added to every request, after and in place of the default ones of the
	// same name (for example "anthropic-beta").
	Headers map[string]string
}

// Client calls Anthropic's Messages API. It is safe for concurrent use.
type Client struct {
	messagesURL string
	countURL    string
	urlErr      error // a BaseURL that cannot be used; returned by every call
	key         string
	version     string
	model       string
	maxTokens   int
	hc          *http.Client
	timeout     time.Duration
	idle        time.Duration
	headers     http.Header
}

// New returns a client for cfg. It does no I/O; an unusable BaseURL is reported by
// Generate.
func New(cfg Config) *Client {
	c := &Client{
		key:       cfg.APIKey,
		version:   cfg.Version,
		model:     cfg.Model,
		maxTokens: cfg.MaxTokens,
		hc:        cfg.HTTPClient,
		timeout:   cfg.Timeout,
		idle:      cfg.IdleTimeout,
		headers:   make(http.Header, len(cfg.Headers)),
	}
	if c.version == "" {
		c.version = DefaultVersion
	}
	if c.maxTokens <= 0 {
		c.maxTokens = DefaultMaxTokens
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
	root, err := apiRoot(cfg.BaseURL)
	if err != nil {
		c.urlErr = err
		return c
	}
	p := root.Path
	root.Path = p + "/v1/messages"
	c.messagesURL = root.String()
	root.Path = p + "/v1/messages/count_tokens"
	c.countURL = root.String()
	return c
}

// apiRoot returns base without the "/v1" or "/v1/messages" users paste.
func apiRoot(base string) (*url.URL, error) {
	base = strings.TrimSpace(base)
	if base == "" {
		base = DefaultBaseURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The URL is not quoted: it could hold credentials.
		return nil, agate.Errorf(agate.EUpstream,
			"The Anthropic base URL is not a valid http(s) URL; check it (for example https://api.anthropic.com).")
	}
	p := strings.TrimRight(u.Path, "/")
	p = strings.TrimSuffix(p, "/messages")
	p = strings.TrimSuffix(p, "/v1")
	u.Path, u.RawPath, u.Fragment, u.RawFragment = strings.TrimRight(p, "/"), "", "", ""
	return u, nil
}

// Generate sends req and streams the reply to emit: each non-empty piece of text, and each
// piece of a tool call (first its ID and Name, then pieces of its Arguments), with Index
// counting the reply's tool calls from 0. A nil emit discards them. It returns the whole
// reply: its text, its tool calls (Arguments "{}" for a call without input), the model that
// wrote it, the finish reason ("stop", "length", "tool_calls", "content_filter"; a stop
// reason it does not know is passed on as it is) and the token usage (prompt tokens include
// cache reads and writes).
//
// If emit returns an error, Generate stops and returns that error. If ctx is done, it
// returns ctx.Err(). A request Anthropic cannot take (an unknown role, tool-call arguments
// that are not a JSON object, …) is an agate.EInvalid error, before anything is sent. Any
// other failure is an *agate.Error whose message can be shown to users:
// agate.EUpstreamAuth (HTTP 401/403, an authentication or permission error event),
// agate.EUpstreamRate (429 with RetryAfter from its retry-after header, a rate limit error
// event), agate.EUpstreamTimeout (408/504, Config.Timeout or Config.IdleTimeout exceeded),
// agate.EStreamTruncated (the stream ended before message_stop and before a stop_reason
// arrived) or agate.EUpstream (anything else, including 529 and overloaded_error events,
// which say Anthropic is overloaded and are worth retrying, and an unreachable provider).
// A stream that ends or stalls without message_stop after a stop_reason is accepted. On
// error the returned Reply holds what arrived before it.
func (c *Client) Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error) {
	if err := ctx.Err(); err != nil {
		return agate.Reply{}, err
	}
	if emit == nil {
		emit = discard
	}
	if c.urlErr != nil {
		return agate.Reply{}, c.urlErr
	}
	model := c.modelOf(req)
	wr, err := newRequest(req, model, c.maxTokens)
	if err != nil {
		return agate.Reply{}, err
	}
	body, err := json.Marshal(wr)
	if err != nil { // only a NaN or infinite temperature or top_p gets here
		return agate.Reply{}, agate.Wrap(agate.EInvalid, err, "The model request could not be encoded; check its temperature and top_p.")
	}

	x, cancel := c.start(ctx)
	defer cancel()
	resp, err := x.post(c.messagesURL, body, "text/event-stream")
	if err != nil {
		return agate.Reply{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return agate.Reply{}, c.statusError(resp, x)
	}
	r, stop := x.body(resp)
	defer stop()
	s := &stream{call: x, emit: emit, blocks: map[int]int{}}
	s.reply.Model = model
	switch mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt {
	case "application/json":
		return s.readJSON(r)
	case "text/html":
		return agate.Reply{}, agate.Errorf(agate.EUpstream,
			"The Anthropic base URL answered with a web page, not the Messages API; check it (for example https://api.anthropic.com).")
	}
	return s.readSSE(r)
}

func discard(agate.Delta) error { return nil }

func (c *Client) modelOf(req agate.ModelRequest) string {
	if req.Model != "" {
		return req.Model
	}
	return c.model
}

// CountTokens returns how many input tokens req would take, from Anthropic's
// /v1/messages/count_tokens endpoint. It is an optional capability: a consumer asserts an
// interface such as interface{ CountTokens(context.Context, agate.ModelRequest) (int, error) }.
// Its errors are those of Generate, without the streaming ones.
func (c *Client) CountTokens(ctx context.Context, req agate.ModelRequest) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if c.urlErr != nil {
		return 0, c.urlErr
	}
	wr, err := newRequest(req, c.modelOf(req), 0)
	if err != nil {
		return 0, err
	}
	// count_tokens takes only the prompt: no generation parameters.
	wr.MaxTokens, wr.Stream, wr.Temperature, wr.TopP, wr.StopSequences = 0, false, nil, nil, nil
	body, err := json.Marshal(wr)
	if err != nil {
		return 0, agate.Wrap(agate.EInvalid, err, "The model request could not be encoded.")
	}
	x, cancel := c.start(ctx)
	defer cancel()
	resp, err := x.post(c.countURL, body, "application/json")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return 0, c.statusError(resp, x)
	}
	r, stop := x.body(resp)
	defer stop()
	data, err := io.ReadAll(io.LimitReader(r, maxErrorBody))
	if err != nil {
		return 0, x.fail(err)
	}
	var v struct {
		InputTokens *int `json:"input_tokens"`
	}
	if err := json.Unmarshal(data, &v); err != nil || v.InputTokens == nil {
		return 0, agate.Errorf(agate.EUpstream, "Anthropic answered the token count with something other than a count.")
	}
	return *v.InputTokens, nil
}

// call is one HTTP exchange with Anthropic.
type call struct {
	c          *Client
	ctx        context.Context // the caller's
	reqCtx     context.Context // the request's, with Timeout and IdleTimeout
	cancelIdle context.CancelCauseFunc
}

// start returns a call whose request context is cancelled by the caller (ctx), by Timeout
// (cause errTimeout) or by IdleTimeout (cause errIdle); fail tells them apart.
func (c *Client) start(ctx context.Context) (*call, func()) {
	reqCtx, cancelTimeout := context.WithTimeoutCause(ctx, c.timeout, errTimeout)
	reqCtx, cancelIdle := context.WithCancelCause(reqCtx)
	return &call{c: c, ctx: ctx, reqCtx: reqCtx, cancelIdle: cancelIdle}, func() {
		cancelIdle(nil)
		cancelTimeout()
	}
}

// post sends body to u. Its error is what the caller returns.
func (x *call) post(u string, body []byte, accept string) (*http.Response, error) {
	hreq, err := http.NewRequestWithContext(x.reqCtx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, agate.Wrap(agate.EUpstream, err, "The request to Anthropic could not be built; check the Anthropic base URL.")
	}
	if x.c.key != "" {
		hreq.Header.Set("x-api-key", x.c.key)
	}
	hreq.Header.Set("anthropic-version", x.c.version)
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", accept)
	for k, v := range x.c.headers {
		hreq.Header[k] = v
	}
	resp, err := x.c.hc.Do(hreq)
	if err != nil {
		return nil, x.fail(err)
	}
	return resp, nil
}

// body returns the response body, read under the idle timeout, and a func that disarms it.
func (x *call) body(resp *http.Response) (io.Reader, func() bool) {
	idle := time.AfterFunc(x.c.idle, func() { x.cancelIdle(errIdle) })
	idle.Stop() // armed only while a read waits; see idleReader
	return &idleReader{r: resp.Body, t: idle, d: x.c.idle}, idle.Stop
}

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
