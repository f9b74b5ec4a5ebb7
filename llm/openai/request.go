package openai

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/agate-gw/agate"
)

// Wire format of a request.

type message struct {
	Role       string     `json:"role"`
	Content    *string    `json:"content"` // null for an assistant message with only tool calls
	ToolCalls  []toolCall `json:"tool_calls,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

type toolCall struct {
	ID       string   `json:"id"`
	Type     string   `json:"type"` // "function"
	Function function `json:"function"`
}

type function struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

type tool struct {
	Type     string       `json:"type"` // "function"
	Function toolFunction `json:"function"`
}

type toolFunction struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      bool            `json:"strict,omitempty"`
}

type namedToolChoice struct {
	Type     string `json:"type"` // "function"
	Function struct {
		Name string `json:"name"`
	} `json:"function"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// field is one member of the request object.
type field struct {
	key   string
	value any
}

// body returns the JSON request body for req, asking for model. Its members are, in this
// order: model, messages, stream, stream_options, then those of the token limit,
// temperature, top_p, stop, tools, tool_choice and response_format that req sets, then
// the members of req.Extra whose names are not among those already written, sorted by
// name (see Generate for this precedence). The order is stable, for golden tests and
// for caches keyed on the body. An Extra value that is not valid JSON is agate.EInvalid.
func (c *Client) body(model string, req agate.ModelRequest) ([]byte, error) {
	msgs := make([]message, len(req.Messages))
	for i, m := range req.Messages {
		msgs[i] = wireMessage(m)
	}
	fields := []field{
		{"model", model},
		{"messages", msgs},
		{"stream", true},
		{"stream_options", streamOptions{IncludeUsage: true}},
	}
	if _, ok := req.Extra["max_completion_tokens"]; req.MaxTokens > 0 && !ok {
		fields = append(fields, field{c.maxTokens, req.MaxTokens})
	}
	if req.Temperature != nil {
		fields = append(fields, field{"temperature", *req.Temperature})
	}
	if req.TopP != nil {
		fields = append(fields, field{"top_p", *req.TopP})
	}
	if len(req.Stop) > 0 {
		fields = append(fields, field{"stop", req.Stop})
	}
	if len(req.Tools) > 0 {
		tools := make([]tool, len(req.Tools))
		for i, t := range req.Tools {
			if len(t.Parameters) > 0 && !json.Valid(t.Parameters) {
				return nil, agate.Errorf(agate.EInvalid, "The parameters of tool %q are not valid JSON.", t.Name)
			}
			tools[i] = tool{Type: "function", Function: toolFunction{Name: t.Name, Description: t.Description, Parameters: t.Parameters, Strict: t.Strict}}
		}
		fields = append(fields, field{"tools", tools})
	}
	switch req.ToolChoice {
	case "":
	case "auto", "none", "required":
		fields = append(fields, field{"tool_choice", req.ToolChoice})
	default:
		var tc namedToolChoice
		tc.Type, tc.Function.Name = "function", req.ToolChoice
		fields = append(fields, field{"tool_choice", tc})
	}
	if len(req.ResponseFormat) > 0 {
		if !json.Valid(req.ResponseFormat) {
			return nil, agate.Errorf(agate.EInvalid, "The response_format of the model request is not valid JSON.")
		}
		fields = append(fields, field{"response_format", req.ResponseFormat})
	}

	var buf bytes.Buffer
	buf.WriteByte('{')
	written := make(map[string]bool, len(fields))
	for i, f := range fields {
		v, err := marshal(f.value)
		if err != nil { // only a NaN or infinite number gets here
			return nil, agate.Wrap(agate.EInvalid, err,
				"The model request could not be encoded; check its temperature and top_p.")
		}
		if i > 0 {
			buf.WriteByte(',')
		}
		writeKey(&buf, f.key)
		buf.Write(v)
		written[f.key] = true
	}
	extra := make([]string, 0, len(req.Extra))
	if written[c.maxTokens] { // never two token limits: servers refuse them
		written["max_tokens"], written["max_completion_tokens"] = true, true
	}
	for k := range req.Extra {
		if !written[k] {
			extra = append(extra, k)
		}
	}
	slices.Sort(extra)
	for _, k := range extra {
		v := req.Extra[k]
		if len(v) == 0 {
			v = json.RawMessage("null")
		}
		buf.WriteByte(',')
		writeKey(&buf, k)
		if err := json.Compact(&buf, v); err != nil {
			return nil, agate.Wrap(agate.EInvalid, err, fmt.Sprintf("The request field %q is not valid JSON.", k))
		}
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

func writeKey(buf *bytes.Buffer, k string) {
	b, _ := marshal(k) // a string always encodes
	buf.Write(b)
	buf.WriteByte(':')
}

// marshal is json.Marshal without escaping <, > and & (text is sent as written).
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// wireMessage maps a canonical message to OpenAI's.
func wireMessage(m agate.Message) message {
	w := message{Role: m.Role, ToolCallID: m.ToolCallID}
	if m.Content != "" || len(m.ToolCalls) == 0 {
		w.Content = &m.Content
	}
	if len(m.ToolCalls) > 0 {
		w.ToolCalls = make([]toolCall, len(m.ToolCalls))
		for i, tc := range m.ToolCalls {
			w.ToolCalls[i] = toolCall{ID: tc.ID, Type: "function", Function: function{Name: tc.Name, Arguments: tc.Arguments}}
		}
	}
	return w
}
