package authn_test

import (
	"testing"
	"time"

	"github.com/agate-gw/agate/authn"
	"github.com/lestrrat-go/jwx/v3/jwa"
)

func benchJWT(b *testing.B, cfg authn.Config, token string) {
	a := newAuth(b, cfg, nil)
	r := bearer(token)
	if _, err := a.Authenticate(r); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkJWTVerifyRS256(b *testing.B) {
	keys(b)
	c := newClock()
	benchJWT(b, authn.Config{RequireAuth: true, JWTPublicKey: publicPEM(b, rsaKey), Issuer: "https://idp.example", Audience: "agate", Now: c.Now},
		sign(b, jwa.RS256(), rsaKey, "", claims()))
}

func BenchmarkJWTVerifyHS256(b *testing.B) {
	c := newClock()
	benchJWT(b, authn.Config{RequireAuth: true, JWTSecret: secret, Issuer: "https://idp.example", Audience: "agate", Now: c.Now},
		sign(b, jwa.HS256(), []byte(secret), "", claims()))
}

// BenchmarkAPIKeyCached is a request with an API key whose secret was verified before:
// the store lookup (an in-memory fake here) and the cache, without PBKDF2.
func BenchmarkAPIKeyCached(b *testing.B) {
	token, key, err := authn.NewAPIKey("acme", "bench", []string{"chat"}, "alice", t0)
	if err != nil {
		b.Fatal(err)
	}
	c := newClock()
	a := newAuth(b, authn.Config{RequireAuth: true, Now: c.Now}, newKeyStore(key))
	r := bearer(token)
	if _, err := a.Authenticate(r); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAPIKeyUncached is the PBKDF2 check itself: what a request costs the first time
// a token is seen by a process (or every verifiedTTL).
func BenchmarkAPIKeyUncached(b *testing.B) {
	token, key, err := authn.NewAPIKey("acme", "bench", []string{"chat"}, "alice", t0)
	if err != nil {
		b.Fatal(err)
	}
	c := newClock()
	a := newAuth(b, authn.Config{RequireAuth: true, Now: c.Now}, newKeyStore(key))
	r := bearer(token)
	b.ReportAllocs()
	for b.Loop() {
		c.Advance(6 * time.Minute) // past the cache's TTL
		if _, err := a.Authenticate(r); err != nil {
			b.Fatal(err)
		}
	}
}
