package authn_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/authn"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

const secret = "0123456789abcdef0123456789abcdef-test-secret"

// t0 is the time of the fake clocks.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)

// clock is a fake clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Test keys are made once: RSA key generation is slow.
var (
	rsaOnce       sync.Once
	rsaKey        *rsa.PrivateKey
	rsaKey2       *rsa.PrivateKey
	ecKey, ecKey2 *ecdsa.PrivateKey
)

func keys(t testing.TB) {
	t.Helper()
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaKey2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if ecKey2, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
	})
}

// publicPEM is the PKIX PEM of key's public half.
func publicPEM(t testing.TB, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// claims are the claims of a valid token at t0.
func claims() map[string]any {
	return map[string]any{
		"sub":    "alice",
		"tenant": "acme",
		"iss":    "https://idp.example",
		"aud":    "agate",
		"iat":    t0.Add(-time.Minute),
		"exp":    t0.Add(time.Hour),
		"scope":  "chat admin",
	}
}

// with returns claims() changed by kv pairs; a nil value removes the claim.
func with(kv ...any) map[string]any {
	c := claims()
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(c, kv[i].(string))
			continue
		}
		c[kv[i].(string)] = kv[i+1]
	}
	return c
}

// sign makes a JWT with jwx.
func sign(t testing.TB, alg jwa.SignatureAlgorithm, key any, kid string, c map[string]any) string {
	t.Helper()
	tok := jwt.New()
	for k, v := range c {
		if err := tok.Set(k, v); err != nil {
			t.Fatalf("set %s: %v", k, err)
		}
	}
	var sub []jwt.Option
	if kid != "" {
		h := jws.NewHeaders()
		if err := h.Set(jws.KeyIDKey, kid); err != nil {
			t.Fatal(err)
		}
		sub = append(sub, jws.WithProtectedHeaders(h))
	}
	b, err := jwt.Sign(tok, jwt.WithKey(alg, key, sub...))
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return string(b)
}

var b64 = base64.RawURLEncoding

// compact builds a token by hand from a header, claims and a signature function.
func compact(t testing.TB, hdr map[string]any, c map[string]any, sig func(signingInput string) []byte) string {
	t.Helper()
	h, err := json.Marshal(hdr)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range c {
		if tm, ok := v.(time.Time); ok {
			c[k] = tm.Unix()
		}
	}
	p, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	in := b64.EncodeToString(h) + "." + b64.EncodeToString(p)
	return in + "." + b64.EncodeToString(sig(in))
}

// bearer is a GET request with an Authorization: Bearer header.
func bearer(token string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/v1/sessions", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	return r
}

func newAuth(t testing.TB, cfg authn.Config, ks authn.KeyStore) *authn.Authenticator {
	t.Helper()
	a, err := authn.New(cfg, ks, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

// wantErr fails unless err has code and its client message contains msg.
func wantErr(t testing.TB, err error, code agate.Code, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want %s (%q)", code, msg)
	}
	if got := agate.ErrorCode(err); got != code {
		t.Fatalf("code = %s, want %s (err %v)", got, code, err)
	}
	if !strings.Contains(agate.ErrorMessage(err), msg) {
		t.Fatalf("message = %q, want it to contain %q", agate.ErrorMessage(err), msg)
	}
}

// keyStore is an in-memory KeyStore.
type keyStore struct {
	mu       sync.Mutex
	keys     map[string]agate.APIKey
	err      error // returned by APIKey when set
	touches  []time.Time
	touchErr error
}

func newKeyStore(ks ...agate.APIKey) *keyStore {
	s := &keyStore{keys: make(map[string]agate.APIKey)}
	for _, k := range ks {
		s.keys[k.ID] = k
	}
	return s
}

func (s *keyStore) APIKey(_ context.Context, id string) (agate.APIKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return agate.APIKey{}, s.err
	}
	k, ok := s.keys[id]
	if !ok {
		return agate.APIKey{}, agate.Errorf(agate.ENotFound, "no API key %s", id)
	}
	return k, nil
}

func (s *keyStore) TouchAPIKey(_ context.Context, id string, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.touches = append(s.touches, at)
	return s.touchErr
}

func (s *keyStore) revoke(id string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[id]
	k.RevokedAt = &at
	s.keys[id] = k
}

func (s *keyStore) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

func (s *keyStore) touchCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.touches)
}

var errDown = errors.New("connection refused")
