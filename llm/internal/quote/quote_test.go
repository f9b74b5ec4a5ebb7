package quote_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/agate-gw/agate/llm/internal/quote"
)

func TestCleanRedactsFlattensAndBounds(t *testing.T) {
	got := quote.Clean("bad key sk-secret-123\n\tsee\xff docs", "sk-secret-123")
	if got != "bad key [redacted] see\uFFFD docs" {
		t.Fatalf("Clean = %q", got)
	}
	long := quote.Clean(strings.Repeat("é", 1000), "")
	if n := utf8.RuneCountInString(long); n != quote.MaxRunes+1 || !strings.HasSuffix(long, "…") {
		t.Fatalf("long text kept %d runes", n)
	}
}

func TestSentenceEndsWithPunctuation(t *testing.T) {
	for in, want := range map[[2]string]string{
		{"Refused", ""}:           "Refused.",
		{"Refused", "no key"}:     "Refused: no key.",
		{"Refused", "no key!"}:    "Refused: no key!",
		{"Refused", "truncated…"}: "Refused: truncated…",
	} {
		if got := quote.Sentence(in[0], in[1]); got != want {
			t.Errorf("Sentence(%q, %q) = %q, want %q", in[0], in[1], got, want)
		}
	}
}
