package authn

import (
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/agate-gw/agate"
)

func TestVerifiedKeysExpireAndStayBounded(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	v := newVerifiedKeys(3, time.Minute)
	a := sha256.Sum256([]byte("a"))
	v.add(a, "h1", t0)
	if !v.has(a, "h1", t0.Add(59*time.Second)) {
		t.Fatal("fresh entry not found")
	}
	if v.has(a, "h2", t0) {
		t.Fatal("entry found for another stored hash")
	}
	v.add(a, "h1", t0)
	if v.has(a, "h1", t0.Add(time.Minute)) {
		t.Fatal("expired entry found")
	}
	for i := range 10 {
		v.add(sha256.Sum256([]byte{byte(i)}), "h", t0)
		if len(v.m) > 3 {
			t.Fatalf("%d entries, want at most 3", len(v.m))
		}
	}
}

func TestAPIKeyVerificationIsCached(t *testing.T) {
	token, key, err := NewAPIKey("acme", "", nil, "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	a, err := New(Config{Now: func() time.Time { return now }}, staticKeys{key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.apiKey(t.Context(), token); err != nil {
		t.Fatal(err)
	}
	if !a.verified.has(sha256.Sum256([]byte(token)), key.Hash, now) {
		t.Fatal("verified token not cached")
	}
	now = now.Add(verifiedTTL)
	if a.verified.has(sha256.Sum256([]byte(token)), key.Hash, now) {
		t.Fatal("cached past its TTL")
	}
}

func TestCheckSecretRefusesMalformedHashes(t *testing.T) {
	for _, h := range []string{
		"", "bcrypt$x", "pbkdf2-sha256$0$AAAA$AAAAAAAAAAAAAAAAAAAAAA", "pbkdf2-sha256$99999999999$AAAA$AAAAAAAAAAAAAAAAAAAAAA",
		"pbkdf2-sha256$10$!!$AAAAAAAAAAAAAAAAAAAAAA", "pbkdf2-sha256$10$AAAA$AAAA",
	} {
		if _, err := checkSecret(h, "secret"); err == nil {
			t.Errorf("checkSecret(%q) accepted a malformed hash", h)
		}
	}
}

type staticKeys struct{ k agate.APIKey }

func (s staticKeys) APIKey(context.Context, string) (agate.APIKey, error) { return s.k, nil }
func (s staticKeys) TouchAPIKey(context.Context, string, time.Time) error { return nil }
