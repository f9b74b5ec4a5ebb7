// Package openai is a client for OpenAI-compatible Chat Completions APIs: OpenAI itself and
// the many servers that speak its wire format (vLLM, llama.cpp, Ollama, LiteLLM, …). It
// streams replies over server-sent events and implements turn.Model.
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
	// APIKey is sent as "Authorization: Bearer <APIKey>" when not empty.
	APIKey string
	// Model is used when a request names no model.
	Model string
	// HTTPClient sends the requests. Default: a client using http.DefaultTransport that
	// follows only the redirects that keep the POST method. A client with its own Timeout
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
	// same name (for example "api-key" for Azure, "OpenAI-Organization", or a different
	// "Authorization").
	Headers map[string]string
}

// Client calls an OpenAI-compatible Chat Completions endpoint. It is safe for concurrent use.
type Client struct {
	endpoint string
	urlErr   error // a BaseURL that cannot be used; returned by every Generate
	key      string
	model    string
	hc       *http.Client
	timeout  time.Duration
	idle     time.Duration
	headers  http.Header
}

// New returns a client for cfg. It does no I/O; an unusable BaseURL is reported by
// Generate.
func New(cfg Config) *Client {
	c := &Client{
		key:     cfg.APIKey,
		model:   cfg.Model,
		hc:      cfg.HTTPClient,
		timeout: cfg.Timeout,
		idle:    cfg.IdleTimeout,
		headers: make(http.Header, len(cfg.Headers)),
	}
	if c.hc == nil {
		c.hc = &http.Client{CheckRedirect: keepMethod}
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.idle <= 0 {
		c.idle = DefaultIdleTimeout
	}
	for k, v := range cfg.Headers {
		c.headers.Set(k, v)
	}
	c.endpoint, c.urlErr = endpoint(cfg.BaseURL)
	return c
}

// keepMethod follows redirects that keep the request's method (307, 308) and stops at the
// others, which would turn the POST into a GET without a body; statusError explains them.
func keepMethod(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if req.Method != via[0].Method {
		return http.ErrUseLastResponse
	}
	return nil
}

// endpoint returns the chat completions URL of base.
func endpoint(base string) (string, error) {
	base = strings.TrimSpace(base)
	if base == "" {
		base = DefaultBaseURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The URL is not quoted: it could hold credentials.
		return "", agate.Errorf(agate.EUpstream,
			"The LLM base URL is not a valid http(s) URL; check LLM_BASE_URL (for example https://api.openai.com/v1).")
	}
	p := strings.TrimRight(u.Path, "/")
	p = strings.TrimSuffix(p, "/chat/completions")
	p = strings.TrimRight(p, "/")
	u.Path, u.RawPath, u.Fragment, u.RawFragment = p+"/chat/completions", "", "", ""
	return u.String(), nil
}

// Wire format.

type chatRequest struct {
	Model         string          `json:"model"`
	Messages      []agate.Message `json:"messages"`
	Stream        bool            `json:"stream"`
	StreamOptions *streamOptions  `json:"stream_options,omitempty"`
	MaxTokens     int             `json:"max_tokens,omitempty"`
	Temperature   *float64        `json:"temperature,omitempty"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

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
	Content string `json:"content"`
	Refusal string `json:"refusal"`
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
// (a nil emit discards them). It returns the whole reply: its text, the model that wrote
// it (as the provider names it), the finish reason ("stop", "length", …) and the token
// usage when the provider reports it.
//
// If emit returns an error, Generate stops and returns that error. If ctx is done, it
// returns ctx.Err(). Any other failure is an *agate.Error whose message can be shown to
// users: agate.EUpstreamAuth (HTTP 401/403), agate.EUpstreamRate (429, with Retry-After),
// agate.EUpstreamTimeout (408/504, Config.Timeout or Config.IdleTimeout exceeded),
// agate.EStreamTruncated (the stream ended before "data: [DONE]" and before any choice
// had a finish_reason) or agate.EUpstream (anything else, including an error object in
// the stream and an unreachable provider). A stream that ends or stalls without
// "[DONE]" after a finish_reason was seen is accepted: the reply is complete, only a
// usage chunk may be missing. On error the returned Reply holds what arrived before it.
//
// A server that ignores "stream": true and answers with an application/json
// "chat.completion" object works too: its content is emitted as one piece.
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
	model := req.Model
	if model == "" {
		model = c.model
	}
	msgs := req.Messages
	if msgs == nil {
		msgs = []agate.Message{}
	}
	body, err := json.Marshal(chatRequest{
		Model:         model,
		Messages:      msgs,
		Stream:        true,
		StreamOptions: &streamOptions{IncludeUsage: true},
		MaxTokens:     req.MaxTokens,
		Temperature:   req.Temperature,
	})
	if err != nil { // only a NaN or infinite temperature gets here
		return agate.Reply{}, agate.Wrap(agate.EInvalid, err, "The model request could not be encoded; check its temperature.")
	}

	// reqCtx is cancelled by the caller (ctx), by Timeout (cause errTimeout) or by
	// IdleTimeout (cause errIdle); fail tells them apart.
	reqCtx, cancelTimeout := context.WithTimeoutCause(ctx, c.timeout, errTimeout)
	defer cancelTimeout()
	reqCtx, cancelIdle := context.WithCancelCause(reqCtx)
	defer cancelIdle(nil)

	hreq, err := http.NewRequestWithContext(reqCtx, http.MethodPost, c.endpoint, bytes.NewReader(body))
	if err != nil {
		return agate.Reply{}, agate.Wrap(agate.EUpstream, err, "The request to the LLM provider could not be built; check LLM_BASE_URL.")
	}
	if c.key != "" {
		hreq.Header.Set("Authorization", "Bearer "+c.key)
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "text/event-stream")
	for k, v := range c.headers {
		hreq.Header[k] = v
	}

	s := &stream{c: c, ctx: ctx, reqCtx: reqCtx, emit: emit}
	s.reply.Model = model
	resp, err := c.hc.Do(hreq)
	if err != nil {
		return agate.Reply{}, s.fail(err)
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
	sawFinish bool // a choice had a finish_reason
}

// readSSE reads a chat.completion.chunk stream until "data: [DONE]".
func (s *stream) readSSE(r io.Reader) (agate.Reply, error) {
	dec := newSSEDecoder(r, maxEventSize)
	for {
		ev, err := dec.Next()
		if err != nil {
			if errors.Is(err, errEventTooLarge) {
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

// add takes in one chunk (or a whole non-streaming completion) and emits its text.
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
			s.reply.FinishReason = *cc.FinishReason
			s.sawFinish = true
		}
		t := cc.Delta.text()
		if whole {
			t = cc.Message.text()
		}
		if t == "" {
			continue
		}
		s.text.WriteString(t)
		if err := s.emit(agate.Delta{Text: t}); err != nil {
			return err
		}
	}
	return nil
}

// result returns the reply so far with err.
func (s *stream) result(err error) (agate.Reply, error) {
	s.reply.Text = s.text.String()
	return s.reply, err
}
