// Package prompt turns a session's history and a tenant's defaults into a model request,
// within a token budget. It is pure: no I/O, no clock.
package prompt

import (
	"fmt"
	"unicode/utf8"

	"github.com/agate-gw/agate"
)

// perMessage is the overhead, in tokens, that chat formats add to each message.
const perMessage = 4

// Tokens estimates the tokens of text the way most BPE tokenizers average out on English
// and code: about four bytes per token, never less than one token per rune-heavy word.
func Tokens(text string) int {
	n := len(text) / 4
	if r := utf8.RuneCountInString(text) / 2; r > n && len(text) > 3*utf8.RuneCountInString(text)/2 {
		n = r // mostly multi-byte text (CJK and the like) runs closer to a token per two runes
	}
	return n + 1
}

// Input is what a request is built from.
type Input struct {
	System    string        // the tenant's system prompt; empty for none
	History   []agate.Event // conversation events, oldest first; the last is the new user message
	Budget    int           // tokens the prompt may use (system prompt included); <= 0: no limit
	Model     string        // model name, "" for the provider's default
	MaxTokens int           // reply limit, 0 for the provider's default
}

// Build returns the model request: the system prompt, then the newest history messages that
// fit the budget, oldest first. The newest message is always included, even alone over the
// budget, so a turn never goes to the model without the user's question.
func Build(in Input) agate.ModelRequest {
	req := agate.ModelRequest{Model: in.Model, MaxTokens: in.MaxTokens}
	used := 0
	if in.System != "" {
		used = Tokens(in.System) + perMessage
	}
	keep := len(in.History)
	for i := len(in.History) - 1; i >= 0; i-- {
		cost := Tokens(in.History[i].Message) + perMessage
		if in.Budget > 0 && used+cost > in.Budget && i < len(in.History)-1 {
			break
		}
		used += cost
		keep = i
	}
	req.Messages = make([]agate.Message, 0, len(in.History)-keep+1)
	if in.System != "" {
		req.Messages = append(req.Messages, agate.Message{Role: agate.RoleSystem, Content: in.System})
	}
	for _, ev := range in.History[keep:] {
		req.Messages = append(req.Messages, agate.Message{Role: ev.Role, Content: ev.Message})
	}
	return req
}

// Conversation puts a session's conversation events (user messages and replies, in seq
// order) in the order the model must read them for the turn of the user message at seq
// upTo: each user message up to it, followed by its reply. A reply belongs to the user
// message whose event id is its metadata "turn_id"; replies finish after later messages
// were queued, so seq order alone would interleave them wrongly.
func Conversation(events []agate.Event, upTo int64) []agate.Event {
	replies := make(map[string]agate.Event)
	for _, ev := range events {
		if ev.Role == agate.RoleAssistant {
			if id, ok := ev.Metadata["turn_id"]; ok {
				replies[fmt.Sprint(id)] = ev
			}
		}
	}
	out := make([]agate.Event, 0, len(events))
	for _, ev := range events {
		if ev.Role != agate.RoleUser || ev.Seq > upTo {
			continue
		}
		out = append(out, ev)
		if r, ok := replies[ev.EventID.String()]; ok {
			out = append(out, r)
		}
	}
	return out
}
