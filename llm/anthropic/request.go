package anthropic

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/agate-gw/agate"
)

// Wire format of a Messages API request.

type messagesRequest struct {
	Model         string      `json:"model"`
	System        string      `json:"system,omitempty"`
	Messages      []message   `json:"messages"`
	MaxTokens     int         `json:"max_tokens,omitempty"` // absent only in count_tokens
	Temperature   *float64    `json:"temperature,omitempty"`
	TopP          *float64    `json:"top_p,omitempty"`
	StopSequences []string    `json:"stop_sequences,omitempty"`
	Tools         []tool      `json:"tools,omitempty"`
	ToolChoice    *toolChoice `json:"tool_choice,omitempty"`
	Stream        bool        `json:"stream,omitempty"` // absent only in count_tokens
}

type message struct {
	Role    string  `json:"role"` // user or assistant
	Content []block `json:"content"`
}

// block is a content block: text, tool_use or tool_result.
type block struct {
	Type      string          `json:"type"`
	Text      string          `json:"text,omitempty"`        // text
	ID        string          `json:"id,omitempty"`          // tool_use
	Name      string          `json:"name,omitempty"`        // tool_use
	Input     json.RawMessage `json:"input,omitempty"`       // tool_use: a JSON object
	ToolUseID string          `json:"tool_use_id,omitempty"` // tool_result
	Content   string          `json:"content,omitempty"`     // tool_result
}

type tool struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	InputSchema json.RawMessage `json:"input_schema"`
}

type toolChoice struct {
	Type string `json:"type"` // auto, any, none or tool
	Name string `json:"name,omitempty"`
}

var emptyObject = json.RawMessage(`{}`)

// newRequest maps a canonical request to the Messages API. It returns an agate.EInvalid
// error for what Anthropic cannot take and the caller can fix: an unknown role, tool-call
// arguments or tool parameters that are not a JSON object, a tool choice that names no
// tool of the request.
func newRequest(req agate.ModelRequest, model string, maxTokens int) (*messagesRequest, error) {
	r := &messagesRequest{
		Model:         model,
		Messages:      []message{},
		MaxTokens:     maxTokens,
		Temperature:   req.Temperature,
		TopP:          req.TopP,
		StopSequences: req.Stop,
		Stream:        true,
	}
	if req.MaxTokens > 0 {
		r.MaxTokens = req.MaxTokens
	}
	var system []string
	for i, m := range req.Messages {
		var role string
		var blocks []block
		switch m.Role {
		case agate.RoleSystem:
			if strings.TrimSpace(m.Content) != "" {
				system = append(system, m.Content)
			}
			continue
		case agate.RoleUser:
			role, blocks = "user", textBlocks(m.Content)
		case agate.RoleAssistant:
			role, blocks = "assistant", textBlocks(m.Content)
			for _, tc := range m.ToolCalls {
				if tc.ID == "" || tc.Name == "" {
					return nil, agate.Errorf(agate.EInvalid, "Message %d has a tool call without an id or a name.", i)
				}
				input, err := toolInput(tc.Arguments)
				if err != nil {
					return nil, agate.Wrap(agate.EInvalid, err, fmt.Sprintf(
						"Message %d calls tool %q with arguments that are not a JSON object.", i, tc.Name))
				}
				blocks = append(blocks, block{Type: "tool_use", ID: tc.ID, Name: tc.Name, Input: input})
			}
		case agate.RoleTool:
			if m.ToolCallID == "" {
				return nil, agate.Errorf(agate.EInvalid, "Message %d is a tool result without the id of its tool call.", i)
			}
			role = "user"
			blocks = []block{{Type: "tool_result", ToolUseID: m.ToolCallID, Content: m.Content}}
		default:
			return nil, agate.Errorf(agate.EInvalid,
				"Message %d has role %q; want system, user, assistant or tool.", i, m.Role)
		}
		if len(blocks) == 0 {
			continue // Anthropic refuses empty content
		}
		// Anthropic wants user and assistant to alternate: merge a message into the one before
		// it when they share a role.
		if n := len(r.Messages); n > 0 && r.Messages[n-1].Role == role {
			r.Messages[n-1].Content = append(r.Messages[n-1].Content, blocks...)
		} else {
			r.Messages = append(r.Messages, message{Role: role, Content: blocks})
		}
	}
	for _, m := range r.Messages {
		if m.Role == "user" {
			resultsFirst(m.Content)
		}
	}
	r.System = strings.Join(system, "\n\n")

	for _, t := range req.Tools {
		schema := t.Parameters
		if len(bytes.TrimSpace(schema)) == 0 || string(bytes.TrimSpace(schema)) == "null" {
			schema = json.RawMessage(`{"type":"object"}`)
		} else if !isObject(schema) {
			return nil, agate.Errorf(agate.EInvalid, "The parameters of tool %q are not a JSON Schema object.", t.Name)
		}
		r.Tools = append(r.Tools, tool{Name: t.Name, Description: t.Description, InputSchema: schema})
	}
	tc, err := newToolChoice(req.ToolChoice, req.Tools)
	if err != nil {
		return nil, err
	}
	r.ToolChoice = tc
	return r, nil
}

// textBlocks returns s as a text block, or none when s is blank: Anthropic refuses text
// blocks without non-whitespace text.
func textBlocks(s string) []block {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return []block{{Type: "text", Text: s}}
}

// resultsFirst moves the tool_result blocks of a user message before its other blocks,
// keeping their order, as Anthropic requires.
func resultsFirst(blocks []block) {
	var results, rest []block
	for _, b := range blocks {
		if b.Type == "tool_result" {
			results = append(results, b)
		} else {
			rest = append(rest, b)
		}
	}
	if len(results) > 0 && len(rest) > 0 {
		copy(blocks[copy(blocks, results):], rest)
	}
}

// toolInput returns a tool call's arguments as a tool_use input: a JSON object, {} for "".
func toolInput(args string) (json.RawMessage, error) {
	if strings.TrimSpace(args) == "" {
		return emptyObject, nil
	}
	raw := json.RawMessage(args)
	if !isObject(raw) {
		return nil, fmt.Errorf("arguments %.40q are not a JSON object", args)
	}
	return raw, nil
}

// isObject reports whether raw is one valid JSON object.
func isObject(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && t[0] == '{' && json.Valid(t)
}

// newToolChoice maps a canonical tool choice. Without tools, "auto" and "none" are dropped
// (Anthropic refuses a tool_choice without tools) and anything else is an error.
func newToolChoice(choice string, tools []agate.Tool) (*toolChoice, error) {
	if choice == "" {
		return nil, nil
	}
	if len(tools) == 0 {
		if choice == "auto" || choice == "none" {
			return nil, nil
		}
		return nil, agate.Errorf(agate.EInvalid, "The tool choice %q needs tools, and the request has none.", choice)
	}
	switch choice {
	case "auto":
		return &toolChoice{Type: "auto"}, nil
	case "required":
		return &toolChoice{Type: "any"}, nil
	case "none":
		return &toolChoice{Type: "none"}, nil
	}
	for _, t := range tools {
		if t.Name == choice {
			return &toolChoice{Type: "tool", Name: choice}, nil
		}
	}
	return nil, agate.Errorf(agate.EInvalid, "The tool choice %q names no tool of the request.", choice)
}
