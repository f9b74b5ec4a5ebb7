// Package demo is Agate's offline demo model, used by the dev profile when no LLM provider
// is configured. Its replies say so in their first words, echo the user's message and
// explain how to configure a real provider. It never calls the network.
package demo

import (
	"context"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/agate-gw/agate"
)

// Name is the model name of every demo reply.
const Name = "agate-demo"

// Label starts every demo reply.
const Label = "[demo model — no LLM provider configured]"

// DefaultChunkDelay is the default pause between two streamed words.
const DefaultChunkDelay = 30 * time.Millisecond

// maxQuote bounds the echoed message, in runes.
const maxQuote = 200

// Config configures a Model. The zero value is ready to use.
type Config struct {
	// ChunkDelay is the pause between two streamed words, to look like a real stream.
	// Default DefaultChunkDelay; negative: no pause.
	ChunkDelay time.Duration
}

// Model is the demo model. It is safe for concurrent use.
type Model struct {
	delay time.Duration
}

// New returns a demo model.
func New(cfg Config) *Model {
	d := cfg.ChunkDelay
	switch {
	case d == 0:
		d = DefaultChunkDelay
	case d < 0:
		d = 0
	}
	return &Model{delay: d}
}

// Generate streams the demo reply to req word by word to emit (a nil emit discards them),
// pausing ChunkDelay between words.
// The reply's model is Name, its finish reason "stop", and its usage an estimate of one
// token per four bytes. It returns ctx.Err() when ctx is done (checked before every word)
// and emit's error when emit fails, each with the text streamed so far; never any other
// error.
func (m *Model) Generate(ctx context.Context, req agate.ModelRequest, emit func(agate.Delta) error) (agate.Reply, error) {
	if emit == nil {
		emit = func(agate.Delta) error { return nil }
	}
	text := Text(req)
	out := agate.Reply{Model: Name}
	var sent strings.Builder
	for i, w := range words(text) {
		if i > 0 && m.delay > 0 {
			if err := sleep(ctx, m.delay); err != nil {
				out.Text = sent.String()
				return out, err
			}
		}
		if err := ctx.Err(); err != nil {
			out.Text = sent.String()
			return out, err
		}
		if err := emit(agate.Delta{Text: w}); err != nil {
			out.Text = sent.String()
			return out, err
		}
		sent.WriteString(w)
	}
	prompt := 0
	for _, msg := range req.Messages {
		prompt += len(msg.Content)
	}
	out.Text, out.FinishReason = text, "stop"
	out.Usage = agate.Usage{PromptTokens: tokens(prompt), CompletionTokens: tokens(len(text))}
	out.Usage.TotalTokens = out.Usage.PromptTokens + out.Usage.CompletionTokens
	return out, nil
}

// Text returns the whole text of the demo reply to req, as Generate streams it.
func Text(req agate.ModelRequest) string {
	said := "You sent no message."
	for i := len(req.Messages) - 1; i >= 0; i-- {
		if m := req.Messages[i]; m.Role == agate.RoleUser {
			said = "You said: “" + quote(m.Content) + "”"
			break
		}
	}
	return Label + " " + said + "\n\n" +
		"I am Agate's built-in demo model: I stream this canned answer so that you can try the " +
		"gateway without an LLM, but I cannot think about your message. To talk to a real model, " +
		"set LLM_BASE_URL to an OpenAI-compatible API (for example https://api.openai.com/v1, or " +
		"http://localhost:11434/v1 for Ollama), LLM_API_KEY to its key and LLM_MODEL to a model it " +
		"serves (for example gpt-4o-mini), then restart agate."
}

// quote returns s on one line, at most maxQuote runes.
func quote(s string) string {
	s = strings.Join(strings.Fields(strings.ToValidUTF8(s, "\uFFFD")), " ")
	if utf8.RuneCountInString(s) > maxQuote {
		s = string([]rune(s)[:maxQuote]) + "…"
	}
	if s == "" {
		return "(only whitespace)"
	}
	return s
}

// words splits s into words, each with the whitespace that follows it; they join to s.
func words(s string) []string {
	var out []string
	start, space := 0, false
	for i, r := range s {
		if unicode.IsSpace(r) {
			space = true
			continue
		}
		if space {
			out = append(out, s[start:i])
			start, space = i, false
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// tokens estimates the tokens of n bytes of text: one per four, rounded up.
func tokens(n int) int { return (n + 3) / 4 }

// sleep waits for d or until ctx is done, returning ctx.Err() in that case.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
