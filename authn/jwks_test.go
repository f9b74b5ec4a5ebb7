package authn_test

import (
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/authn"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
)

// jwksServer serves a JWKS that tests change, and counts its fetches.
type jwksServer struct {
	*httptest.Server
	mu    sync.Mutex
	body  []byte
	down  bool
	delay time.Duration
	hits  atomic.Int32
}

func newJWKSServer(t testing.TB) *jwksServer {
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		time.Sleep(s.delay)
		if s.down {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Write(s.body)
	}))
	t.Cleanup(s.Close)
	return s
}

// jwkOf is the public JWK of key with kid, and alg when not "".
func jwkOf(t testing.TB, key crypto.Signer, kid, alg string) jwk.Key {
	t.Helper()
	k, err := jwk.Import(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Set(jwk.KeyIDKey, kid); err != nil {
		t.Fatal(err)
	}
	if alg != "" {
		if err := k.Set(jwk.AlgorithmKey, alg); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// serve makes the server's set hold keys.
func (s *jwksServer) serve(t testing.TB, keys ...any) {
	t.Helper()
	set := map[string]any{"keys": keys}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body, s.down = b, false
}

func (s *jwksServer) setDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

func jwksAuth(t testing.TB, s *jwksServer, c *clock) *authn.Authenticator {
	return newAuth(t, authn.Config{RequireAuth: true, JWKSURL: s.URL + "/jwks.json", JWKSRefetch: 30 * time.Second, Now: c.Now}, nil)
}

func TestJWKSRotation(t *testing.T) {
	keys(t)
	s := newJWKSServer(t)
	c := newClock()
	s.serve(t, jwkOf(t, rsaKey, "k1", ""))
	a := jwksAuth(t, s, c)

	old := sign(t, jwa.RS256(), rsaKey, "k1", claims())
	if _, err := a.Authenticate(bearer(old)); err != nil {
		t.Fatalf("k1: %v", err)
	}
	if _, err := a.Authenticate(bearer(old)); err != nil {
		t.Fatalf("k1 again: %v", err)
	}
	if n := s.hits.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1 (keys cached)", n)
	}

	// The IdP rotates: k2 replaces k1.
	s.serve(t, jwkOf(t, rsaKey2, "k2", "RS256"))
	c.Advance(31 * time.Second)
	if _, err := a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey2, "k2", claims()))); err != nil {
		t.Fatalf("k2 after rotation: %v", err)
	}
	if n := s.hits.Load(); n != 2 {
		t.Fatalf("fetches = %d, want 2 (an unknown kid refetches)", n)
	}
	_, err := a.Authenticate(bearer(old))
	wantErr(t, err, agate.EUnauthenticated, `unknown key id (kid) "k1"`)

	c.Advance(31 * time.Second) // a refetch is allowed again; k1 is still gone
	_, err = a.Authenticate(bearer(old))
	wantErr(t, err, agate.EUnauthenticated, `unknown key id (kid) "k1"`)
	if n := s.hits.Load(); n != 3 {
		t.Fatalf("fetches = %d, want 3", n)
	}
}

func TestJWKSRefetchIsRateLimited(t *testing.T) {
	keys(t)
	s := newJWKSServer(t)
	c := newClock()
	s.serve(t, jwkOf(t, rsaKey, "k1", "RS256"))
	a := jwksAuth(t, s, c)
	if _, err := a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey, "k1", claims()))); err != nil {
		t.Fatal(err)
	}

	unknown := func() {
		t.Helper()
		var wg sync.WaitGroup
		for i := range 50 {
			tok := sign(t, jwa.RS256(), rsaKey, fmt.Sprintf("unknown-%d", i), claims())
			wg.Go(func() {
				_, err := a.Authenticate(bearer(tok))
				if agate.ErrorCode(err) != agate.EUnauthenticated {
					t.Errorf("unknown kid: err = %v, want unauthenticated", err)
				}
			})
		}
		wg.Wait()
	}
	unknown() // within JWKSRefetch of the first fetch: no fetch at all
	if n := s.hits.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1", n)
	}
	c.Advance(30 * time.Second)
	unknown() // 50 concurrent unknown kids: one fetch
	if n := s.hits.Load(); n != 2 {
		t.Fatalf("fetches = %d, want 2", n)
	}
	c.Advance(29 * time.Second)
	unknown()
	if n := s.hits.Load(); n != 2 {
		t.Fatalf("fetches = %d, want still 2", n)
	}
}

// Requests that arrive while a fetch runs wait for it rather than being refused as
// rate-limited.
func TestConcurrentRequestsShareOneJWKSFetch(t *testing.T) {
	keys(t)
	s := newJWKSServer(t)
	c := newClock()
	s.serve(t, jwkOf(t, rsaKey, "k1", ""))
	a := jwksAuth(t, s, c)
	if _, err := a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey, "k1", claims()))); err != nil {
		t.Fatal(err)
	}
	s.serve(t, jwkOf(t, rsaKey2, "k2", ""))
	s.mu.Lock()
	s.delay = 50 * time.Millisecond
	s.mu.Unlock()
	c.Advance(time.Minute)

	tok := sign(t, jwa.RS256(), rsaKey2, "k2", claims())
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := a.Authenticate(bearer(tok)); err != nil {
				t.Errorf("k2: %v", err)
			}
		})
	}
	wg.Wait()
	if n := s.hits.Load(); n != 2 {
		t.Fatalf("fetches = %d, want 2", n)
	}
}

func TestJWKSDownWithUnknownKidIsUnavailable(t *testing.T) {
	keys(t)
	s := newJWKSServer(t)
	c := newClock()
	s.serve(t, jwkOf(t, rsaKey, "k1", ""))
	a := jwksAuth(t, s, c)
	k1 := sign(t, jwa.RS256(), rsaKey, "k1", claims())
	k2 := sign(t, jwa.RS256(), rsaKey2, "k2", claims())
	if _, err := a.Authenticate(bearer(k1)); err != nil {
		t.Fatal(err)
	}

	s.setDown(true)
	c.Advance(time.Minute)
	_, err := a.Authenticate(bearer(k2))
	wantErr(t, err, agate.EUnavailable, "JWKS")
	_, err = a.Authenticate(bearer(k2)) // rate-limited: the last fetch failed, still can't tell
	wantErr(t, err, agate.EUnavailable, "JWKS")
	if _, err := a.Authenticate(bearer(k1)); err != nil {
		t.Fatalf("a cached key works while the JWKS is down: %v", err)
	}

	// Back up, with k2.
	s.serve(t, jwkOf(t, rsaKey, "k1", ""), jwkOf(t, rsaKey2, "k2", ""))
	c.Advance(time.Minute)
	if _, err := a.Authenticate(bearer(k2)); err != nil {
		t.Fatalf("k2 once the JWKS is back: %v", err)
	}

	t.Run("unreachable from the start", func(t *testing.T) {
		dead := httptest.NewServer(http.NotFoundHandler())
		dead.Close()
		a := newAuth(t, authn.Config{RequireAuth: true, JWKSURL: dead.URL, Now: c.Now}, nil)
		_, err := a.Authenticate(bearer(k1))
		wantErr(t, err, agate.EUnavailable, "JWKS")
	})
}

func TestJWKSKeysOnlyVerifyTheirOwnAlgorithm(t *testing.T) {
	keys(t)
	s := newJWKSServer(t)
	c := newClock()
	// An HMAC key in a JWKS is never used: HS* are not accepted with a JWKS.
	oct, err := jwk.Import([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	oct.Set(jwk.KeyIDKey, "oct")
	s.serve(t, jwkOf(t, rsaKey, "rsa", "RS256"), jwkOf(t, ecKey, "ec", ""), oct)
	a := jwksAuth(t, s, c)

	for _, tc := range []struct {
		name string
		tok  string
		err  string // "" accepted
	}{
		{"RS256 with its key", sign(t, jwa.RS256(), rsaKey, "rsa", claims()), ""},
		{"ES256 with its key", sign(t, jwa.ES256(), ecKey, "ec", claims()), ""},
		{"PS256 with an RS256 key", sign(t, jwa.PS256(), rsaKey, "rsa", claims()), "does not fit"},
		{"RS256 naming the EC key", sign(t, jwa.RS256(), rsaKey, "ec", claims()), "does not fit"},
		{"HS256 naming the oct key", sign(t, jwa.HS256(), []byte(secret), "oct", claims()), "is not accepted"},
		{"ES256 without kid", sign(t, jwa.ES256(), ecKey, "", claims()), ""},
		{"ES256 by another key", sign(t, jwa.ES256(), ecKey2, "ec", claims()), "bad signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Authenticate(bearer(tc.tok))
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErr(t, err, agate.EUnauthenticated, tc.err)
		})
	}
}

func TestRunFetchesTheJWKS(t *testing.T) {
	keys(t)
	s := newJWKSServer(t)
	s.serve(t, jwkOf(t, rsaKey, "k1", ""))
	a := newAuth(t, authn.Config{JWKSURL: s.URL}, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	for s.hits.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	// The key was fetched by Run: a token needs no fetch.
	if _, err := a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey, "k1", with("exp", time.Now().Add(time.Hour), "iat", time.Now())))); err != nil {
		t.Fatal(err)
	}
	if n := s.hits.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1", n)
	}

	// Without a JWKS, Run just waits.
	b := newAuth(t, authn.Config{}, nil)
	ctx, cancel = context.WithCancel(t.Context())
	cancel()
	if err := b.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
}
