// Package quote puts a provider's own words into the gateway's error messages safely.
package quote

import (
	"strings"
	"unicode/utf8"
)

// MaxRunes bounds the provider text quoted in an error message.
const MaxRunes = 300

// Clean makes provider text fit for an error message: secret (an API key, when at least 4
// bytes) redacted, valid UTF-8 on one line, at most MaxRunes runes.
func Clean(s, secret string) string {
	if len(secret) >= 4 {
		s = strings.ReplaceAll(s, secret, "[redacted]")
	}
	s = strings.Join(strings.Fields(strings.ToValidUTF8(s, "\uFFFD")), " ")
	if utf8.RuneCountInString(s) > MaxRunes {
		s = string([]rune(s)[:MaxRunes]) + "…"
	}
	return s
}

// Sentence returns head + ": " + msg as a sentence ending in punctuation, or head + "."
// when msg is empty.
func Sentence(head, msg string) string {
	if msg == "" {
		return head + "."
	}
	if !strings.HasSuffix(msg, ".") && !strings.HasSuffix(msg, "!") && !strings.HasSuffix(msg, "?") && !strings.HasSuffix(msg, "…") {
		msg += "."
	}
	return head + ": " + msg
}
