package httpapi

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/prompt"
	"github.com/google/uuid"
)

// The OpenAI-compatible ingress: POST /v1/chat/completions and GET /v1/models. It speaks
// OpenAI's exact request and response shapes (streaming ends with "data: [DONE]"), so the
// official SDKs work unchanged, and it goes through the same authentication as the rest
// of the API. It is stateless unless X-Session-Id names a session to record into.

// chatRequest is OpenAI's request, the fields Agate understands. Everything else is
// passed through to OpenAI-compatible providers in ModelRequest.Extra.
type chatRequest struct {
	Model               string          `json:"model"`
	Messages            []chatMessage   `json:"messages"`
	Stream              bool            `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
	Temperature         *float64        `json:"temperature"`
	TopP                *float64        `json:"top_p"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Stop                json.RawMessage `json:"stop"` // a string or an array of them
	Tools               []chatTool      `json:"tools"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	ResponseFormat      json.RawMessage `json:"response_format"`
	N                   *int            `json:"n"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type chatMessage struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"` // a string, an array of parts, or null
	Name       string          `json:"name,omitempty"`
	ToolCalls  []chatToolCall  `json:"tool_calls,omitempty"`
	ToolCallID string          `json:"tool_call_id,omitempty"`
}

type chatToolCall struct {
	Index    *int   `json:"index,omitempty"` // in stream chunks only
	ID       string `json:"id,omitempty"`
	Type     string `json:"type,omitempty"`
	Function struct {
		Name      string `json:"name,omitempty"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type chatTool struct {
	Type     string `json:"type"`
	Function struct {
		Name        string          `json:"name"`
		Description string          `json:"description,omitempty"`
		Parameters  json.RawMessage `json:"parameters,omitempty"`
		Strict      bool            `json:"strict,omitempty"`
	} `json:"function"`
}

// known lists the request fields chatRequest handles; the rest go to Extra.
var known = map[string]bool{
	"model": true, "messages": true, "stream": true, "stream_options": true, "temperature": true,
	"top_p": true, "max_tokens": true, "max_completion_tokens": true, "stop": true, "tools": true,
	"tool_choice": true, "response_format": true, "n": true,
}

// readChat decodes and validates an OpenAI chat request into a model request.
func (s *Server) readChat(w http.ResponseWriter, r *http.Request) (chatRequest, agate.ModelRequest, error) {
	var cr chatRequest
	var req agate.ModelRequest
	body, err := s.readBody(w, r, s.cfg.MaxChatBodyBytes)
	if err != nil {
		return cr, req, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return cr, req, agate.Errorf(agate.EInvalidJSON, "The body must be one JSON object.")
	}
	if err := json.Unmarshal(body, &cr); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return cr, req, agate.Errorf(agate.EInvalidJSON, "Field %q must be %s.", truncate(typeErr.Field, 64), jsonKind(typeErr.Type.Kind()))
		}
		return cr, req, agate.Errorf(agate.EInvalidJSON, "The body is not a valid chat completion request.")
	}
	for k, v := range fields {
		if !known[k] {
			if req.Extra == nil {
				req.Extra = map[string]json.RawMessage{}
			}
			req.Extra[k] = v
		}
	}
	req.Model, req.Temperature, req.TopP, req.ResponseFormat = cr.Model, cr.Temperature, cr.TopP, cr.ResponseFormat
	if cr.MaxTokens != nil {
		req.MaxTokens = *cr.MaxTokens
	}
	if cr.MaxCompletionTokens != nil {
		// Reasoning models refuse max_tokens: OpenAI-compatible providers get the field as
		// the client named it; others read MaxTokens.
		req.MaxTokens = *cr.MaxCompletionTokens
		if req.Extra == nil {
			req.Extra = map[string]json.RawMessage{}
		}
		req.Extra["max_completion_tokens"] = fields["max_completion_tokens"]
	}
	if req.MaxTokens < 0 {
		return cr, req, agate.Errorf(agate.EInvalid, "max_tokens must not be negative.")
	}
	if cr.N != nil && *cr.N != 1 {
		return cr, req, agate.Errorf(agate.EInvalid, "n must be 1: this gateway returns one choice.")
	}
	if req.Stop, err = stopList(cr.Stop); err != nil {
		return cr, req, err
	}
	if req.ToolChoice, err = toolChoice(cr.ToolChoice); err != nil {
		return cr, req, err
	}
	for i, t := range cr.Tools {
		if t.Type != "function" || t.Function.Name == "" {
			return cr, req, agate.Errorf(agate.EInvalid, "tools[%d] must be a function with a name.", i)
		}
		req.Tools = append(req.Tools, agate.Tool{Name: t.Function.Name, Description: t.Function.Description, Parameters: t.Function.Parameters, Strict: t.Function.Strict})
	}
	if len(cr.Messages) == 0 {
		return cr, req, agate.Errorf(agate.EInvalid, "messages must hold at least one message.")
	}
	for i, m := range cr.Messages {
		msg, err := canonical(m)
		if err != nil {
			return cr, req, agate.Errorf(agate.EInvalid, "messages[%d]: %s", i, agate.ErrorMessage(err))
		}
		req.Messages = append(req.Messages, msg)
	}
	return cr, req, nil
}

// canonical converts one OpenAI message.
func canonical(m chatMessage) (agate.Message, error) {
	switch m.Role {
	case "system", "developer", "user", "assistant", "tool":
	default:
		return agate.Message{}, agate.Errorf(agate.EInvalid, "role %q is not one of system, developer, user, assistant, tool.", truncate(m.Role, 32))
	}
	msg := agate.Message{Role: m.Role, ToolCallID: m.ToolCallID}
	if m.Role == "developer" {
		msg.Role = agate.RoleSystem
	}
	text, err := contentText(m.Content)
	if err != nil {
		return msg, err
	}
	msg.Content = text
	for _, tc := range m.ToolCalls {
		if tc.ID == "" || tc.Function.Name == "" {
			return msg, agate.Errorf(agate.EInvalid, "each tool call needs an id and a function name.")
		}
		msg.ToolCalls = append(msg.ToolCalls, agate.ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: tc.Function.Arguments})
	}
	if m.Role == "tool" && m.ToolCallID == "" {
		return msg, agate.Errorf(agate.EInvalid, "a tool message needs tool_call_id.")
	}
	return msg, nil
}

// contentText reads a message's content: a string, null, or an array of text parts.
func contentText(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", agate.Errorf(agate.EInvalid, "content must be a string or an array of parts.")
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type != "text" {
			return "", agate.Errorf(agate.EInvalid, "content parts of type %q are not supported; send text.", truncate(p.Type, 32))
		}
		b.WriteString(p.Text)
	}
	return b.String(), nil
}

func stopList(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, agate.Errorf(agate.EInvalid, "stop must be a string or an array of strings.")
	}
	return many, nil
}

func toolChoice(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var mode string
	if json.Unmarshal(raw, &mode) == nil {
		switch mode {
		case "auto", "none", "required":
			return mode, nil
		}
		return "", agate.Errorf(agate.EInvalid, "tool_choice must be auto, none, required or a function.")
	}
	var named struct {
		Type     string `json:"type"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if err := json.Unmarshal(raw, &named); err != nil || named.Type != "function" || named.Function.Name == "" {
		return "", agate.Errorf(agate.EInvalid, "tool_choice must be auto, none, required or a function.")
	}
	return named.Function.Name, nil
}

// OpenAI's response shapes.
type (
	completion struct {
		ID      string         `json:"id"`
		Object  string         `json:"object"`
		Created int64          `json:"created"`
		Model   string         `json:"model"`
		Choices []choice       `json:"choices"`
		Usage   *agate.Usage   `json:"usage,omitempty"`
		Error   *openaiErrBody `json:"error,omitempty"`
	}
	choice struct {
		Index        int          `json:"index"`
		Message      *chatMessage `json:"message,omitempty"`
		Delta        *chatDelta   `json:"delta,omitempty"`
		FinishReason *string      `json:"finish_reason"`
		Logprobs     *struct{}    `json:"logprobs"`
	}
	chatDelta struct {
		Role      string         `json:"role,omitempty"`
		Content   *string        `json:"content,omitempty"`
		ToolCalls []chatToolCall `json:"tool_calls,omitempty"`
	}
	openaiErrBody struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	}
)

// chatError is an error in OpenAI's shape, plus Agate's own fields.
type chatError struct {
	Error openaiErrBody `json:"error"`
	errorBody
}

// failChat answers an error in OpenAI's shape (SDKs read "error") with Agate's status.
func (s *Server) failChat(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil && agate.ErrorCode(err) != agate.EClientGone {
		err = agate.Wrap(agate.EClientGone, err, "The client closed the request.")
	}
	s.logError(r, err)
	code := agate.ErrorCode(err)
	st := status(code)
	setRetryAfter(w, err, st)
	msg := agate.ErrorMessage(err)
	writeJSON(w, st, chatError{
		Error:     openaiErrBody{Message: msg, Type: openaiErrType(st), Code: string(code)},
		errorBody: errorBody{Detail: msg, Code: code, RequestID: requestID(r.Context())},
	})
}

func openaiErrType(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status >= 500:
		return "api_error"
	default:
		return "invalid_request_error"
	}
}

// handleChatCompletions answers an OpenAI chat completion request, streamed or not.
func (s *Server) handleChatCompletions() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		cr, req, err := s.readChat(w, r)
		if err != nil {
			s.failChat(w, r, err)
			return
		}
		if err := s.decideModel(r, req.Model); err != nil {
			s.failChat(w, r, err)
			return
		}
		record, err := s.recordInto(r)
		if err != nil {
			s.failChat(w, r, err)
			return
		}
		settle, err := s.reserve(r, &req)
		if err != nil {
			s.failChat(w, r, err) // budget_exceeded: 429 with the time until the budget resets
			return
		}
		c := &chatCall{Server: s, w: w, r: r, cr: cr, start: start, stopped: s.stopCtx,
			id: "chatcmpl-" + strings.ReplaceAll(uuid.NewString(), "-", ""), created: start.Unix()}
		if !s.acquire() {
			settle(0)
			s.failChat(w, r, agate.Errorf(agate.EOverloaded, "Too many chat completions are running; retry shortly."))
			return
		}
		defer s.release()
		reply, err := func() (reply agate.Reply, err error) {
			defer func() { settle(prompt.Used(req, reply, "")) }() // also when the call panics
			return c.generate(req)
		}()
		switch {
		case err == nil:
		case !c.started:
			s.failChat(w, r, err)
			return
		case r.Context().Err() != nil:
			s.logError(r, agate.Wrap(agate.EClientGone, err, "The client closed the stream."))
			return
		default:
			s.logError(r, err)
			c.streamError(err) // the stream has begun: the error ends it, without [DONE]
			return
		}
		c.finish(reply)
		if record != nil {
			record(req, reply)
		}
	})
}

// chatCall is one chat completion being answered.
type chatCall struct {
	*Server
	w        http.ResponseWriter
	r        *http.Request
	cr       chatRequest
	id       string
	created  int64
	start    time.Time
	began    time.Time       // when the model was called
	writing  time.Duration   // of the model call, the time spent writing chunks to the client
	upstream time.Duration   // the model call, less the writing
	started  bool            // the streamed response has begun
	stopped  context.Context // done when the gateway drains
	buf      bytes.Buffer
}

// generate calls the model; when streaming, each delta is written as a chunk. Headers go
// out with the first delta, so a failure before it (after the router's retries and
// fallbacks) is still answered with a proper status.
func (c *chatCall) generate(req agate.ModelRequest) (agate.Reply, error) {
	c.began = time.Now()
	var emit func(agate.Delta) error // nil: nothing reaches the client before the end, so the router may retry throughout
	if c.cr.Stream {
		emit = func(d agate.Delta) error {
			t := time.Now()
			defer func() { c.writing += time.Since(t) }()
			if !c.started {
				c.startStream()
			}
			delta := &chatDelta{}
			if d.Text != "" {
				delta.Content = &d.Text
			}
			if tc := d.ToolCall; tc != nil {
				call := chatToolCall{Index: &tc.Index, ID: tc.ID}
				if tc.ID != "" {
					call.Type = "function"
				}
				call.Function.Name, call.Function.Arguments = tc.Name, tc.Arguments
				delta.ToolCalls = []chatToolCall{call}
			}
			return c.chunk(choice{Delta: delta}, nil)
		}
	}
	// On shutdown the call ends (a stream with an error chunk) instead of holding Drain.
	ctx, cancel := context.WithCancel(c.r.Context())
	defer cancel()
	defer context.AfterFunc(c.stopped, cancel)()
	reply, err := c.model.Generate(ctx, req, emit)
	c.upstream = time.Since(c.began) - c.writing
	if err != nil && c.stopped.Err() != nil && c.r.Context().Err() == nil {
		err = agate.Wrap(agate.EUnavailable, err, "The gateway is shutting down; retry the request.")
	}
	return reply, err
}

// startStream sends the headers and the role chunk. A streamed response's
// X-Agate-Overhead-Ms is the time Agate took before calling the model: the rest is not
// known when headers must go.
func (c *chatCall) startStream() {
	c.started = true
	h := c.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	h.Set("X-Agate-Overhead-Ms", overheadMs(c.began.Sub(c.start)))
	c.w.WriteHeader(http.StatusOK)
	empty := ""
	_ = c.chunk(choice{Delta: &chatDelta{Role: agate.RoleAssistant, Content: &empty}}, nil)
}

// chunk writes one chat.completion.chunk.
func (c *chatCall) chunk(ch choice, usage *agate.Usage) error {
	out := completion{ID: c.id, Object: "chat.completion.chunk", Created: c.created, Model: c.cr.Model, Usage: usage, Choices: []choice{}}
	if usage == nil {
		out.Choices = []choice{ch}
	}
	return c.sse(out)
}

func (c *chatCall) sse(v any) error {
	rc := http.NewResponseController(c.w)
	_ = rc.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout)) // a client that stops reading is let go
	c.buf.Reset()
	c.buf.WriteString("data: ")
	enc := json.NewEncoder(&c.buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	c.buf.WriteString("\n")
	if _, err := c.w.Write(c.buf.Bytes()); err != nil {
		return err
	}
	return rc.Flush()
}

// finish ends a successful call: the last chunks and [DONE], or the whole completion.
func (c *chatCall) finish(reply agate.Reply) {
	finish := reply.FinishReason
	if finish == "" {
		finish = agate.FinishStop
	}
	if !c.cr.Stream {
		msg := &chatMessage{Role: agate.RoleAssistant}
		if reply.Text != "" || len(reply.ToolCalls) == 0 {
			msg.Content, _ = json.Marshal(reply.Text)
		} else {
			msg.Content = json.RawMessage("null")
		}
		for _, tc := range reply.ToolCalls {
			call := chatToolCall{ID: tc.ID, Type: "function"}
			call.Function.Name, call.Function.Arguments = tc.Name, tc.Arguments
			msg.ToolCalls = append(msg.ToolCalls, call)
		}
		usage := reply.Usage
		c.w.Header().Set("X-Agate-Overhead-Ms", overheadMs(time.Since(c.start)-c.upstream))
		writeJSON(c.w, http.StatusOK, completion{
			ID: c.id, Object: "chat.completion", Created: c.created, Model: cmp.Or(reply.Model, c.cr.Model),
			Choices: []choice{{Message: msg, FinishReason: &finish}}, Usage: &usage,
		})
		return
	}
	if !c.started {
		c.startStream()
	}
	_ = c.chunk(choice{Delta: &chatDelta{}, FinishReason: &finish}, nil)
	if c.cr.StreamOptions != nil && c.cr.StreamOptions.IncludeUsage {
		usage := reply.Usage
		_ = c.chunk(choice{}, &usage)
	}
	_, _ = io.WriteString(c.w, "data: [DONE]\n\n")
	_ = http.NewResponseController(c.w).Flush()
}

// streamError ends a begun stream with an error chunk, as OpenAI does.
func (c *chatCall) streamError(err error) {
	code := agate.ErrorCode(err)
	_ = c.sse(completion{ID: c.id, Object: "chat.completion.chunk", Created: c.created, Model: c.cr.Model,
		Choices: []choice{}, Error: &openaiErrBody{Message: agate.ErrorMessage(err), Type: openaiErrType(status(code)), Code: string(code)}})
}

func overheadMs(d time.Duration) string {
	return fmt.Sprintf("%.3f", float64(max(d, 0).Microseconds())/1000)
}

// recordInto returns, for a request with X-Session-Id, a function that records the
// exchange into that session (the last user message and the reply); nil without the
// header. The session must exist for the caller's tenant.
func (s *Server) recordInto(r *http.Request) (func(agate.ModelRequest, agate.Reply), error) {
	raw := r.Header.Get("X-Session-Id")
	if raw == "" {
		return nil, nil
	}
	id, err := parseSessionID(raw)
	if err != nil {
		return nil, err
	}
	p, _ := agate.PrincipalFrom(r.Context())
	sess, err := s.store.Session(r.Context(), p.Tenant, id)
	if err != nil {
		return nil, err
	}
	if err := s.permit(r, sess, relWriter); err != nil {
		return nil, err
	}
	return func(req agate.ModelRequest, reply agate.Reply) {
		var evs []agate.Event
		for i := len(req.Messages) - 1; i >= 0; i-- {
			if m := req.Messages[i]; m.Role == agate.RoleUser {
				evs = append(evs, agate.Event{SessionID: id, Role: agate.RoleUser, Type: agate.TypeUserMessage,
					Message: m.Content, Metadata: map[string]any{"source": "chat.completions"}})
				break
			}
		}
		evs = append(evs, agate.Event{SessionID: id, Role: agate.RoleAssistant, Type: agate.TypeFinal, Message: reply.Text,
			Metadata: map[string]any{"status": agate.StatusOK, "source": "chat.completions", "model": reply.Model,
				"finish_reason": reply.FinishReason, "usage": reply.Usage}})
		stored, err := s.store.Append(context.WithoutCancel(r.Context()), nil, evs...)
		if err != nil {
			s.logError(r, fmt.Errorf("record the exchange into session %s: %w", id, err))
			return
		}
		for _, ev := range stored {
			s.hub.Publish(ev)
		}
	}, nil
}

type modelList struct {
	Object string      `json:"object"`
	Data   []modelInfo `json:"data"`
}

type modelInfo struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// handleModels lists the model names a client may ask for: aliases, then concrete models.
func (s *Server) handleModels() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		list := modelList{Object: "list", Data: []modelInfo{}}
		for _, m := range s.model.Models() {
			list.Data = append(list.Data, modelInfo{ID: m, Object: "model", Created: s.started.Unix(), OwnedBy: "agate"})
		}
		writeJSON(w, http.StatusOK, list)
	})
}
