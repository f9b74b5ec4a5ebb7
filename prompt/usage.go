package prompt

import "github.com/agate-gw/agate"

// DefaultReplyTokens bounds the reply of a request that sets no limit when its tokens are
// reserved on a budget: a reservation holds only for a bounded reply.
const DefaultReplyTokens = 4096

// Worst returns the most tokens req may use: its prompt (messages, the calls they carry,
// the tools offered) and its reply limit, maxReply when req sets none.
func Worst(req agate.ModelRequest, maxReply int) int64 {
	reply := req.MaxTokens
	if reply <= 0 {
		reply = maxReply
	}
	return int64(reply + promptTokens(req))
}

// Used returns the tokens a model call used: the provider's count, else an estimate of the
// prompt and of what was generated (the reply's text, or streamed when it has none, and
// its tool calls); none when nothing was.
func Used(req agate.ModelRequest, reply agate.Reply, streamed string) int64 {
	if reply.Usage.TotalTokens > 0 {
		return int64(reply.Usage.TotalTokens)
	}
	text := reply.Text
	if text == "" {
		text = streamed
	}
	for _, c := range reply.ToolCalls {
		text += c.Name + c.Arguments
	}
	if text == "" {
		return 0
	}
	return int64(Tokens(text) + promptTokens(req))
}

func promptTokens(req agate.ModelRequest) int {
	n := 0
	for _, m := range req.Messages {
		n += Tokens(m.Content) + Tokens(m.ToolCallID)
		for _, c := range m.ToolCalls {
			n += Tokens(c.Name) + Tokens(c.Arguments)
		}
	}
	for _, t := range req.Tools {
		n += Tokens(t.Name) + Tokens(t.Description) + Tokens(string(t.Parameters))
	}
	return n
}
