package demo_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/demo"
	"github.com/agate-gw/agate/turn"
	"github.com/google/go-cmp/cmp"
)

var _ turn.Model = (*demo.Model)(nil)

func request(msgs ...agate.Message) agate.ModelRequest { return agate.ModelRequest{Messages: msgs} }

func user(s string) agate.Message { return agate.Message{Role: agate.RoleUser, Content: s} }

func TestStreamsLabelledReplyWordByWord(t *testing.T) {
	req := request(
		agate.Message{Role: agate.RoleSystem, Content: "Be helpful."},
		user("first"),
		agate.Message{Role: agate.RoleAssistant, Content: "ok"},
		user("What is  the\nweather?"),
	)
	var deltas []string
	got, err := demo.New(demo.Config{ChunkDelay: -1}).Generate(t.Context(), req, func(d agate.Delta) error {
		deltas = append(deltas, d.Text)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(deltas, "")
	if !strings.HasPrefix(text, demo.Label+" You said: “What is the weather?”") {
		t.Errorf("reply starts %q", text[:min(len(text), 120)])
	}
	for _, s := range []string{"LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL"} {
		if !strings.Contains(text, s) {
			t.Errorf("reply does not mention %s", s)
		}
	}
	if len(deltas) < 20 {
		t.Errorf("%d deltas, want one per word", len(deltas))
	}
	for _, d := range deltas {
		if strings.TrimSpace(d) == "" || strings.Contains(strings.TrimSpace(d), " ") {
			t.Errorf("delta %q is not one word", d)
		}
	}
	prompt := (len("Be helpful.") + len("first") + len("ok") + len("What is  the\nweather?") + 3) / 4
	completion := (len(text) + 3) / 4
	want := agate.Reply{
		Text: text, Model: "agate-demo", FinishReason: "stop",
		Usage: agate.Usage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reply (-want +got):\n%s", diff)
	}
	if text != demo.Text(req) {
		t.Error("streamed text differs from demo.Text")
	}
}

func TestEchoIsBounded(t *testing.T) {
	tests := []struct{ name, msg, want string }{
		{"long", strings.Repeat("ab ", 200), "You said: “" + strings.Repeat("ab ", 66) + "ab…”"},
		{"whitespace", " \n\t", "You said: “(only whitespace)”"},
		{"none", "", "You sent no message."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := request()
			if tt.name != "none" {
				req = request(user(tt.msg))
			}
			if got := demo.Text(req); !strings.HasPrefix(got, demo.Label+" "+tt.want+"\n\n") {
				t.Errorf("Text = %q, want it to start with %q", got, tt.want)
			}
		})
	}
}

func TestStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var deltas []string
	got, err := demo.New(demo.Config{}).Generate(ctx, request(user("hi")), func(d agate.Delta) error {
		deltas = append(deltas, d.Text)
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if len(deltas) != 1 || got.Text != deltas[0] {
		t.Errorf("deltas %q, text %q; want one delta", deltas, got.Text)
	}
}

func TestStopsOnEmitError(t *testing.T) {
	errGone := errors.New("gone")
	calls := 0
	got, err := demo.New(demo.Config{ChunkDelay: -1}).Generate(t.Context(), request(user("hi")), func(d agate.Delta) error {
		calls++
		if calls == 2 {
			return errGone
		}
		return nil
	})
	if err != errGone || calls != 2 || got.Text != "[demo " {
		t.Errorf("err %v after %d calls, text %q", err, calls, got.Text)
	}
}
