package openai

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/agate-gw/agate"
)

// toolCallPiece is one element of a chunk's delta.tool_calls (or of a non-streaming
// message.tool_calls). Every field may be missing.
type toolCallPiece struct {
	Index    *int          `json:"index"`
	ID       string        `json:"id"`
	Type     string        `json:"type"`
	Function functionPiece `json:"function"`
}

// functionPiece is a tool call's "function" object, or a legacy "function_call".
type functionPiece struct {
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments"`
}

// arguments returns the arguments text. OpenAI sends a JSON string holding JSON text; a
// few servers send the arguments object itself, which is kept as its JSON text.
func (f functionPiece) arguments() string {
	raw := bytes.TrimSpace(f.Arguments)
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return ""
	case raw[0] == '"':
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
	}
	return string(raw)
}

// toolCalls assembles the tool calls of one reply from their streamed pieces.
//
// A call's position (its Index in the deltas and in Reply.ToolCalls) is the order in
// which calls first appeared, which is OpenAI's own index for servers that number from 0.
// A call begins with a piece that names its function. Each piece goes to a call found by
// these rules, in order:
//
//  1. a piece with an id already seen goes to the call with that id (whatever its index);
//  2. a piece with an index goes to the call last given that index, unless it begins a
//     call (a name and an id) while that call has another id: then it starts a new call
//     (servers that number every call 0). An unseen index starts a new call;
//  3. a piece without an index that begins a call (an unseen id and a name) starts a new
//     call;
//  4. any other piece goes to the call that took the previous piece (servers that omit
//     index send a call's pieces in a row), or starts the first call.
//
// So pieces of several calls may interleave as long as each carries its index or its
// call's id, and a proxy that puts a fresh id on every piece of a call does no harm. No
// piece is ever dropped. A call's id and name are the first non-empty ones it was sent
// (servers that repeat them on every piece do no harm; a later, different id is taken
// as an alias); arguments are appended in arrival order.
type toolCalls struct {
	calls   []*partialCall
	byIndex map[int]int    // provider index → position
	byID    map[string]int // id → position
	last    int            // position of the call that took the previous piece; -1 before any
}

type partialCall struct {
	id, name string
	args     strings.Builder
}

func newToolCalls() *toolCalls {
	return &toolCalls{byIndex: map[int]int{}, byID: map[string]int{}, last: -1}
}

// add assigns a streamed piece to its call and returns what it adds, or nil if nothing.
func (tc *toolCalls) add(p toolCallPiece) *agate.ToolCallDelta {
	pos, isNew := tc.find(p)
	if isNew {
		pos = tc.start()
	}
	if p.Index != nil {
		tc.byIndex[*p.Index] = pos
	}
	return tc.fill(pos, p, isNew)
}

// whole adds a call that arrived whole (in a non-streaming reply) as a call of its own.
func (tc *toolCalls) whole(p toolCallPiece) *agate.ToolCallDelta {
	return tc.fill(tc.start(), p, true)
}

// find returns the position of the call p continues, or isNew.
func (tc *toolCalls) find(p toolCallPiece) (pos int, isNew bool) {
	if p.ID != "" {
		if pos, ok := tc.byID[p.ID]; ok {
			return pos, false
		}
	}
	begins := p.ID != "" && p.Function.Name != "" // with an id not seen: rule 1 did not match
	if p.Index != nil {
		pos, ok := tc.byIndex[*p.Index]
		if !ok || (begins && tc.calls[pos].id != "") {
			return 0, true
		}
		return pos, false
	}
	if begins || tc.last < 0 {
		return 0, true
	}
	return tc.last, false
}

func (tc *toolCalls) start() int {
	tc.calls = append(tc.calls, &partialCall{})
	return len(tc.calls) - 1
}

// fill adds p's content to the call at pos and returns the delta of what was new.
func (tc *toolCalls) fill(pos int, p toolCallPiece, isNew bool) *agate.ToolCallDelta {
	tc.last = pos
	c := tc.calls[pos]
	d := agate.ToolCallDelta{Index: pos}
	if p.ID != "" {
		if c.id == "" {
			c.id, d.ID = p.ID, p.ID
		}
		tc.byID[p.ID] = pos // the id, or an alias of it
	}
	if p.Function.Name != "" && c.name == "" {
		c.name, d.Name = p.Function.Name, p.Function.Name
	}
	d.Arguments = p.Function.arguments()
	c.args.WriteString(d.Arguments)
	if !isNew && d.ID == "" && d.Name == "" && d.Arguments == "" {
		return nil
	}
	return &d
}

// result returns the assembled calls, or nil when there were none.
func (tc *toolCalls) result() []agate.ToolCall {
	if len(tc.calls) == 0 {
		return nil
	}
	out := make([]agate.ToolCall, len(tc.calls))
	for i, c := range tc.calls {
		out[i] = agate.ToolCall{ID: c.id, Name: c.name, Arguments: c.args.String()}
	}
	return out
}
