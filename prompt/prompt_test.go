package prompt_test

import (
	"strings"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/prompt"
	"github.com/google/go-cmp/cmp"
)

func msg(role, text string) agate.Event { return agate.Event{Role: role, Message: text} }

func TestBuildKeepsNewestMessagesWithinBudget(t *testing.T) {
	long := strings.Repeat("word ", 400) // ~500 tokens
	history := []agate.Event{
		msg("user", long),
		msg("assistant", "old answer"),
		msg("user", "recent question"),
		msg("assistant", "recent answer"),
		msg("user", "new question"),
	}
	got := prompt.Build(prompt.Input{System: "Be brief.", History: history, Budget: 100, Model: "m", MaxTokens: 50})
	want := agate.ModelRequest{Model: "m", MaxTokens: 50, Messages: []agate.Message{
		{Role: "system", Content: "Be brief."},
		{Role: "assistant", Content: "old answer"},
		{Role: "user", Content: "recent question"},
		{Role: "assistant", Content: "recent answer"},
		{Role: "user", Content: "new question"},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Build (-want +got):\n%s", diff)
	}
}

func TestBuildAlwaysSendsTheNewestMessage(t *testing.T) {
	huge := strings.Repeat("x", 10_000)
	got := prompt.Build(prompt.Input{History: []agate.Event{msg("user", "earlier"), msg("user", huge)}, Budget: 10})
	if len(got.Messages) != 1 || got.Messages[0].Content != huge {
		t.Fatalf("got %d messages; want only the newest, whole", len(got.Messages))
	}
}

func TestBuildWithoutBudgetKeepsEverything(t *testing.T) {
	history := []agate.Event{msg("user", "a"), msg("assistant", "b"), msg("user", "c")}
	got := prompt.Build(prompt.Input{History: history})
	if len(got.Messages) != 3 {
		t.Fatalf("got %d messages, want 3", len(got.Messages))
	}
}

func TestTokensGrowsWithText(t *testing.T) {
	if a, b := prompt.Tokens("hello"), prompt.Tokens(strings.Repeat("hello ", 100)); a >= b {
		t.Fatalf("Tokens(short)=%d >= Tokens(long)=%d", a, b)
	}
	if got := prompt.Tokens("你好世界你好世界"); got < 4 {
		t.Fatalf("Tokens(CJK) = %d, want at least one token per two runes", got)
	}
}

func TestConversationPairsRepliesWithTheirMessages(t *testing.T) {
	m1, m2, m3 := agate.Event{Seq: 1, Role: "user", Message: "m1"}, agate.Event{Seq: 3, Role: "user", Message: "m2"}, agate.Event{Seq: 4, Role: "user", Message: "m3"}
	m1.EventID, m2.EventID, m3.EventID = [16]byte{1}, [16]byte{2}, [16]byte{3}
	r1 := agate.Event{Seq: 6, Role: "assistant", Message: "r1", Metadata: map[string]any{"turn_id": m1.EventID.String()}}
	// m2 and m3 were queued while m1's turn ran, so r1 is stored after them.
	got := prompt.Conversation([]agate.Event{m1, m2, m3, r1}, 3)
	var texts []string
	for _, ev := range got {
		texts = append(texts, ev.Message)
	}
	if diff := cmp.Diff([]string{"m1", "r1", "m2"}, texts); diff != "" {
		t.Errorf("conversation for m2's turn (-want +got):\n%s", diff)
	}
}
