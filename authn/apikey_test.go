package authn_test

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/authn"
	"github.com/google/go-cmp/cmp"
)

func newKey(t testing.TB, scopes ...string) (string, agate.APIKey) {
	t.Helper()
	token, key, err := authn.NewAPIKey("acme", "ci", scopes, "alice", t0)
	if err != nil {
		t.Fatal(err)
	}
	return token, key
}

func xAPIKey(token string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	r.Header.Set("X-API-Key", token)
	return r
}

func TestNewAPIKey(t *testing.T) {
	token, key := newKey(t, "chat")
	if !regexp.MustCompile(`^sk_[a-z0-9]{16}_[A-Za-z0-9_-]{43}$`).MatchString(token) {
		t.Errorf("token %q does not have the form sk_<16 [a-z0-9]>_<43 base64url>", token)
	}
	if !regexp.MustCompile(`^pbkdf2-sha256\$10000\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`).MatchString(key.Hash) {
		t.Errorf("hash %q does not have the form pbkdf2-sha256$10000$<salt>$<key>", key.Hash)
	}
	id, sec, ok := authn.ParseAPIKey(token)
	if !ok || id != key.ID || !strings.HasSuffix(token, "_"+sec) {
		t.Fatalf("ParseAPIKey = %q, %q, %v; want id %q", id, sec, ok, key.ID)
	}
	if strings.Contains(key.Hash, sec) {
		t.Error("the hash contains the secret")
	}
	want := agate.APIKey{ID: key.ID, Tenant: "acme", Label: "ci", Scopes: []string{"chat"}, Hash: key.Hash, CreatedBy: "alice", CreatedAt: t0}
	if diff := cmp.Diff(want, key); diff != "" {
		t.Errorf("key (-want +got):\n%s", diff)
	}
	token2, key2 := newKey(t)
	if token2 == token || key2.ID == key.ID || key2.Hash == key.Hash {
		t.Error("two keys share a token, id or hash")
	}
	if _, _, err := authn.NewAPIKey("", "x", nil, "alice", t0); agate.ErrorCode(err) != agate.EInvalid {
		t.Errorf("NewAPIKey without tenant: err = %v, want invalid", err)
	}
}

func TestParseAPIKey(t *testing.T) {
	sec := strings.Repeat("A", 43)
	for _, tc := range []struct {
		token  string
		id     string
		secret string
	}{
		{"sk_abcdefgh01234567_" + sec, "abcdefgh01234567", sec},
		{"sk_abcdefgh01234567_" + "_-_" + sec[3:], "abcdefgh01234567", "_-_" + sec[3:]},
		{"sk_abcdefgh0123456_" + sec, "", ""},      // id too short
		{"sk_ABCDEFGH01234567_" + sec, "", ""},     // id upper case
		{"sk_abcdefgh01234567-" + sec, "", ""},     // no separator
		{"sk_abcdefgh01234567_" + sec[1:], "", ""}, // secret too short
		{"sk_abcdefgh01234567_" + sec[1:] + "=", "", ""},
		{"pk_abcdefgh01234567_" + sec, "", ""},
		{"", "", ""},
	} {
		id, secret, ok := authn.ParseAPIKey(tc.token)
		if ok != (tc.id != "") || id != tc.id || secret != tc.secret {
			t.Errorf("ParseAPIKey(%q) = %q, %q, %v; want %q, %q", tc.token, id, secret, ok, tc.id, tc.secret)
		}
	}
}

func TestAPIKeyAuthenticates(t *testing.T) {
	token, key := newKey(t, "chat", "admin")
	c := newClock()
	a := newAuth(t, authn.Config{RequireAuth: true, Now: c.Now}, newKeyStore(key))
	want := agate.Principal{Tenant: "acme", Subject: "apikey:" + key.ID, Scopes: []string{"chat", "admin"}, Via: agate.ViaAPIKey, KeyID: key.ID}
	for name, r := range map[string]*http.Request{
		"Authorization": bearer(token),
		"X-API-Key":     xAPIKey(token),
	} {
		got, err := a.Authenticate(r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: principal (-want +got):\n%s", name, diff)
		}
	}
}

func TestBadAPIKeysAreRefusedAlike(t *testing.T) {
	token, key := newKey(t)
	other, _ := newKey(t)
	c := newClock()
	a := newAuth(t, authn.Config{RequireAuth: true, Now: c.Now}, newKeyStore(key))
	id, _, _ := authn.ParseAPIKey(token)
	_, otherSecret, _ := authn.ParseAPIKey(other)
	for name, tok := range map[string]string{
		"wrong secret": "sk_" + id + "_" + otherSecret,
		"unknown id":   other,
		"malformed":    "sk_nope",
	} {
		_, err := a.Authenticate(bearer(tok))
		wantErr(t, err, agate.EUnauthenticated, "invalid API key")
		if agate.ErrorMessage(err) != "invalid API key" {
			t.Errorf("%s: message %q, want exactly %q", name, agate.ErrorMessage(err), "invalid API key")
		}
	}
	// A good token still works after the bad ones (nothing was cached for them).
	if _, err := a.Authenticate(bearer(token)); err != nil {
		t.Fatal(err)
	}
	// The wrong secret is still wrong once the right one is cached.
	_, err := a.Authenticate(bearer("sk_" + id + "_" + otherSecret))
	wantErr(t, err, agate.EUnauthenticated, "invalid API key")
}

func TestRevokedAPIKeyIsRefusedAtOnce(t *testing.T) {
	token, key := newKey(t)
	c := newClock()
	ks := newKeyStore(key)
	a := newAuth(t, authn.Config{RequireAuth: true, Now: c.Now}, ks)
	if _, err := a.Authenticate(bearer(token)); err != nil { // now verified and cached
		t.Fatal(err)
	}
	ks.revoke(key.ID, t0)
	_, err := a.Authenticate(bearer(token))
	wantErr(t, err, agate.EUnauthenticated, "API key revoked")
}

func TestAPIKeyStoreDownIsUnavailable(t *testing.T) {
	token, key := newKey(t)
	c := newClock()
	ks := newKeyStore(key)
	a := newAuth(t, authn.Config{RequireAuth: true, Now: c.Now}, ks)
	if _, err := a.Authenticate(bearer(token)); err != nil {
		t.Fatal(err)
	}
	ks.fail(errDown)
	_, err := a.Authenticate(bearer(token)) // even with the verification cached
	wantErr(t, err, agate.EUnavailable, "key store")
}

func TestAPIKeyUseIsRecordedAtMostOnceAMinute(t *testing.T) {
	token, key := newKey(t)
	c := newClock()
	ks := newKeyStore(key)
	a := newAuth(t, authn.Config{RequireAuth: true, Now: c.Now}, ks)
	for range 5 {
		if _, err := a.Authenticate(bearer(token)); err != nil {
			t.Fatal(err)
		}
		c.Advance(10 * time.Second)
	}
	if n := ks.touchCount(); n != 1 {
		t.Fatalf("touches = %d, want 1 in 50s", n)
	}
	c.Advance(20 * time.Second)
	if _, err := a.Authenticate(bearer(token)); err != nil {
		t.Fatal(err)
	}
	if n := ks.touchCount(); n != 2 {
		t.Fatalf("touches = %d, want 2 after a minute", n)
	}

	// A failing touch does not fail the request.
	ks.touchErr = errDown
	c.Advance(time.Minute)
	if _, err := a.Authenticate(bearer(token)); err != nil {
		t.Fatalf("touch failure surfaced: %v", err)
	}
}

func TestAPIKeysRefusedWithoutKeyStore(t *testing.T) {
	token, _ := newKey(t)
	a := newAuth(t, authn.Config{JWTSecret: secret}, nil)
	_, err := a.Authenticate(bearer(token))
	wantErr(t, err, agate.EUnauthenticated, "API keys are not accepted")
}
