package prompt_test

import (
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/prompt"
)

func TestWorstAndUsed(t *testing.T) {
	req := agate.ModelRequest{Messages: []agate.Message{{Role: "user", Content: "hello there"}}}
	p := prompt.Worst(req, 0) // the prompt alone
	if p <= 0 {
		t.Fatalf("Worst without a reply limit = %d", p)
	}
	if got := prompt.Worst(req, 100); got != p+100 {
		t.Errorf("Worst with a default reply of 100 = %d, want %d", got, p+100)
	}
	req.MaxTokens = 10
	if got := prompt.Worst(req, 100); got != p+10 {
		t.Errorf("Worst with max_tokens 10 = %d, want %d (the request's limit wins)", got, p+10)
	}
	withTools := req
	withTools.Tools = []agate.Tool{{Name: "lookup", Description: "Looks things up.", Parameters: []byte(`{"type":"object"}`)}}
	if prompt.Worst(withTools, 0) <= prompt.Worst(req, 0) {
		t.Error("the tools offered are not counted")
	}

	if got := prompt.Used(req, agate.Reply{Usage: agate.Usage{TotalTokens: 42}, Text: "x"}, ""); got != 42 {
		t.Errorf("Used with the provider's count = %d, want 42", got)
	}
	if got := prompt.Used(req, agate.Reply{}, ""); got != 0 {
		t.Errorf("Used of a call that produced nothing = %d, want 0", got)
	}
	if got := prompt.Used(req, agate.Reply{}, "streamed text"); got <= p-10 {
		t.Errorf("Used of a streamed reply = %d, want the prompt and the text", got)
	}
	calls := agate.Reply{ToolCalls: []agate.ToolCall{{Name: "lookup", Arguments: `{"q":"x"}`}}}
	if got := prompt.Used(req, calls, ""); got == 0 {
		t.Error("Used of a reply of tool calls only = 0")
	}
}
