package authn_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/authn"
	"github.com/google/go-cmp/cmp"
	"github.com/lestrrat-go/jwx/v3/jwa"
)

// jwtConfig verifies HS* with the test secret, and RS*/PS* or ES* with pub.
func jwtConfig(t testing.TB, c *clock, pub crypto.Signer) authn.Config {
	return authn.Config{
		RequireAuth: true, JWTSecret: secret, JWTPublicKey: publicPEM(t, pub),
		Issuer: "https://idp.example", Audience: "agate", Now: c.Now,
	}
}

func TestValidJWTsAreAccepted(t *testing.T) {
	keys(t)
	c := newClock()
	want := agate.Principal{Tenant: "acme", Subject: "alice", Scopes: []string{"chat", "admin"}, Via: agate.ViaJWT}
	for _, tc := range []struct {
		name string
		pub  crypto.Signer
		alg  jwa.SignatureAlgorithm
		key  any
	}{
		{"HS256", rsaKey, jwa.HS256(), []byte(secret)},
		{"HS512", rsaKey, jwa.HS512(), []byte(secret)},
		{"RS256", rsaKey, jwa.RS256(), rsaKey},
		{"PS384", rsaKey, jwa.PS384(), rsaKey},
		{"ES256", ecKey, jwa.ES256(), ecKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAuth(t, jwtConfig(t, c, tc.pub), nil)
			got, err := a.Authenticate(bearer(sign(t, tc.alg, tc.key, "", claims())))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("principal (-want +got):\n%s", diff)
			}
		})
	}
}

func TestJWTTimeClaimsAreCheckedWithLeeway(t *testing.T) {
	keys(t)
	c := newClock()
	a := newAuth(t, jwtConfig(t, c, rsaKey), nil) // default leeway 30s
	for _, tc := range []struct {
		name   string
		claims map[string]any
		err    string // "" accepted
	}{
		{"expired", with("exp", t0.Add(-time.Minute)), "token expired"},
		{"expired within leeway", with("exp", t0.Add(-10*time.Second)), ""},
		{"nbf in the future", with("nbf", t0.Add(time.Minute)), "not valid yet"},
		{"nbf within leeway", with("nbf", t0.Add(10*time.Second)), ""},
		{"iat in the future", with("iat", t0.Add(time.Minute)), "issued in the future"},
		{"no exp", with("exp", nil), "without exp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey, "", tc.claims)))
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErr(t, err, agate.EUnauthenticated, tc.err)
		})
	}

	t.Run("leeway is configurable", func(t *testing.T) {
		cfg := jwtConfig(t, c, rsaKey)
		cfg.Leeway = time.Second
		a := newAuth(t, cfg, nil)
		_, err := a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey, "", with("exp", t0.Add(-10*time.Second)))))
		wantErr(t, err, agate.EUnauthenticated, "token expired")
	})
}

func TestJWTIssuerAndAudienceAreChecked(t *testing.T) {
	keys(t)
	c := newClock()
	a := newAuth(t, jwtConfig(t, c, rsaKey), nil)
	for _, tc := range []struct {
		name   string
		claims map[string]any
		err    string
	}{
		{"wrong issuer", with("iss", "https://evil.example"), "wrong issuer"},
		{"no issuer", with("iss", nil), "wrong issuer"},
		{"wrong audience", with("aud", "someone-else"), "wrong audience"},
		{"no audience", with("aud", nil), "wrong audience"},
		{"audience among several", with("aud", []string{"other", "agate"}), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey, "", tc.claims)))
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErr(t, err, agate.EUnauthenticated, tc.err)
		})
	}

	t.Run("unchecked when not configured", func(t *testing.T) {
		cfg := jwtConfig(t, c, rsaKey)
		cfg.Issuer, cfg.Audience = "", ""
		a := newAuth(t, cfg, nil)
		if _, err := a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey, "", with("iss", "x", "aud", "y")))); err != nil {
			t.Fatal(err)
		}
	})
}

func TestUnsignedJWTIsRefused(t *testing.T) {
	keys(t)
	c := newClock()
	a := newAuth(t, jwtConfig(t, c, rsaKey), nil)
	for _, alg := range []string{"none", "None", "NONE"} {
		tok := compact(t, map[string]any{"alg": alg, "typ": "JWT"}, claims(), func(string) []byte { return nil })
		_, err := a.Authenticate(bearer(tok))
		wantErr(t, err, agate.EUnauthenticated, "alg none")
	}
	// A header without alg is no better.
	tok := compact(t, map[string]any{"typ": "JWT"}, claims(), func(in string) []byte { return hmacSHA256([]byte(secret), in) })
	_, err := a.Authenticate(bearer(tok))
	wantErr(t, err, agate.EUnauthenticated, "malformed token")

	if _, err := authn.New(authn.Config{JWTSecret: secret, Algorithms: []string{"HS256", "none"}}, nil, nil); err == nil ||
		!strings.Contains(err.Error(), "GATEWAY_JWT_ALGORITHMS") {
		t.Fatalf("New with alg none: err = %v, want one naming GATEWAY_JWT_ALGORITHMS", err)
	}
}

func hmacSHA256(key []byte, in string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(in))
	return m.Sum(nil)
}

// The classic attack: the server has an RSA public key; the attacker signs an HS256 token
// with the bytes of that (public) key as HMAC secret.
func TestHS256SignedWithThePublicKeyIsRefused(t *testing.T) {
	keys(t)
	c := newClock()
	pemKey := publicPEM(t, rsaKey)
	forged := func(alg string) string {
		return compact(t, map[string]any{"alg": alg, "typ": "JWT"}, claims(), func(in string) []byte {
			return hmacSHA256([]byte(pemKey), in)
		})
	}

	t.Run("public key only", func(t *testing.T) {
		a := newAuth(t, authn.Config{RequireAuth: true, JWTPublicKey: pemKey, Now: c.Now}, nil)
		_, err := a.Authenticate(bearer(forged("HS256")))
		wantErr(t, err, agate.EUnauthenticated, `algorithm "HS256" is not accepted`)
		// Claiming RS256 over an HMAC signature fails the RSA check.
		_, err = a.Authenticate(bearer(forged("RS256")))
		wantErr(t, err, agate.EUnauthenticated, "bad signature")
	})
	t.Run("secret and public key", func(t *testing.T) {
		// HS* are accepted here, but only ever with the secret.
		a := newAuth(t, authn.Config{RequireAuth: true, JWTSecret: secret, JWTPublicKey: pemKey, Now: c.Now}, nil)
		_, err := a.Authenticate(bearer(forged("HS256")))
		wantErr(t, err, agate.EUnauthenticated, "bad signature")
	})
	t.Run("HS256 cannot be enabled without a secret", func(t *testing.T) {
		_, err := authn.New(authn.Config{JWTPublicKey: pemKey, Algorithms: []string{"RS256", "HS256"}}, nil, nil)
		if err == nil || !strings.Contains(err.Error(), "GATEWAY_JWT_SECRET") {
			t.Fatalf("err = %v, want one naming GATEWAY_JWT_SECRET", err)
		}
	})
	t.Run("a PEM key is refused as secret", func(t *testing.T) {
		_, err := authn.New(authn.Config{JWTSecret: pemKey}, nil, nil)
		if err == nil || !strings.Contains(err.Error(), "GATEWAY_JWT_PUBLIC_KEY") {
			t.Fatalf("err = %v, want one pointing at GATEWAY_JWT_PUBLIC_KEY", err)
		}
	})
}

func TestTamperedJWTIsRefused(t *testing.T) {
	keys(t)
	c := newClock()
	a := newAuth(t, jwtConfig(t, c, rsaKey), nil)
	for _, tc := range []struct {
		name string
		tok  string
	}{
		{"RS256", sign(t, jwa.RS256(), rsaKey, "", claims())},
		{"HS256", sign(t, jwa.HS256(), []byte(secret), "", claims())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parts := strings.Split(tc.tok, ".")
			payload := compact(t, map[string]any{}, with("tenant", "other-tenant"), func(string) []byte { return nil })
			forged := parts[0] + "." + strings.Split(payload, ".")[1] + "." + parts[2]
			_, err := a.Authenticate(bearer(forged))
			wantErr(t, err, agate.EUnauthenticated, "bad signature")

			// A flipped signature bit.
			sig := []byte(parts[2])
			sig[5] ^= 1
			_, err = a.Authenticate(bearer(parts[0] + "." + parts[1] + "." + string(sig)))
			wantErr(t, err, agate.EUnauthenticated, "")
		})
	}
	t.Run("signed by another key", func(t *testing.T) {
		_, err := a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey2, "", claims())))
		wantErr(t, err, agate.EUnauthenticated, "bad signature")
		_, err = a.Authenticate(bearer(sign(t, jwa.HS256(), []byte("another secret, 32 bytes or more!"), "", claims())))
		wantErr(t, err, agate.EUnauthenticated, "bad signature")
	})
	t.Run("header alg swapped", func(t *testing.T) {
		tok := sign(t, jwa.RS256(), rsaKey, "", claims())
		hdr := b64.EncodeToString([]byte(`{"alg":"RS384","typ":"JWT"}`))
		_, err := a.Authenticate(bearer(hdr + tok[strings.Index(tok, "."):]))
		wantErr(t, err, agate.EUnauthenticated, "bad signature")
	})
	t.Run("garbage", func(t *testing.T) {
		for _, tok := range []string{"x", "a.b", "a.b.c", "a.b.c.d.e", "e30.e30.e30"} {
			_, err := a.Authenticate(bearer(tok))
			wantErr(t, err, agate.EUnauthenticated, "")
		}
	})
}

func TestTenantComesFromTheFirstTenantClaim(t *testing.T) {
	c := newClock()
	a := newAuth(t, authn.Config{RequireAuth: true, JWTSecret: secret, Now: c.Now}, nil)
	for _, tc := range []struct {
		name   string
		claims map[string]any
		want   string // "" refused
	}{
		{"tenant first", with("tenant", "t1", "org", "o1", "customer", "c1"), "t1"},
		{"then org", with("tenant", nil, "org", "o1", "customer", "c1"), "o1"},
		{"then customer", with("tenant", nil, "customer", "c1"), "c1"},
		{"empty tenant skipped", with("tenant", "", "org", "o1"), "o1"},
		{"non-string tenant skipped", with("tenant", 42, "org", "o1"), "o1"},
		{"none", with("tenant", nil), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := a.Authenticate(bearer(sign(t, jwa.HS256(), []byte(secret), "", tc.claims)))
			if tc.want == "" {
				wantErr(t, err, agate.EUnauthenticated, "looked for claims tenant, org, customer")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Tenant != tc.want {
				t.Errorf("tenant = %q, want %q", p.Tenant, tc.want)
			}
		})
	}
	t.Run("configured claims", func(t *testing.T) {
		a := newAuth(t, authn.Config{JWTSecret: secret, TenantClaims: []string{"https://acme/tenant"}, Now: c.Now}, nil)
		p, err := a.Authenticate(bearer(sign(t, jwa.HS256(), []byte(secret), "", with("https://acme/tenant", "t9"))))
		if err != nil || p.Tenant != "t9" {
			t.Fatalf("tenant = %q, err = %v; want t9", p.Tenant, err)
		}
	})
}

func TestSubjectIsRequired(t *testing.T) {
	c := newClock()
	a := newAuth(t, authn.Config{JWTSecret: secret, Now: c.Now}, nil)
	_, err := a.Authenticate(bearer(sign(t, jwa.HS256(), []byte(secret), "", with("sub", nil))))
	wantErr(t, err, agate.EUnauthenticated, "no subject")
}

func TestScopesFromScopeOrScp(t *testing.T) {
	c := newClock()
	a := newAuth(t, authn.Config{JWTSecret: secret, Now: c.Now}, nil)
	for _, tc := range []struct {
		name   string
		claims map[string]any
		want   []string
		err    string
	}{
		{"scope string", with("scope", "read  write"), []string{"read", "write"}, ""},
		{"scp string", with("scope", nil, "scp", "read write"), []string{"read", "write"}, ""},
		{"scp array", with("scope", nil, "scp", []string{"read", "admin"}), []string{"read", "admin"}, ""},
		{"scope wins over scp", with("scope", "a", "scp", []string{"b"}), []string{"a"}, ""},
		{"none", with("scope", nil), nil, ""},
		{"scope not a string", with("scope", []string{"a"}), nil, "scope must be"},
		{"scp array of numbers", with("scope", nil, "scp", []int{1}), nil, "scp must be"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := a.Authenticate(bearer(sign(t, jwa.HS256(), []byte(secret), "", tc.claims)))
			if tc.err != "" {
				wantErr(t, err, agate.EUnauthenticated, tc.err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, p.Scopes); diff != "" {
				t.Errorf("scopes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPublicKeyForms(t *testing.T) {
	keys(t)
	c := newClock()
	pkcs1 := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey)}))
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "idp"},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &rsaKey.PublicKey, rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	cert := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	for name, p := range map[string]string{
		"PKIX":            publicPEM(t, rsaKey),
		"PKCS#1":          pkcs1,
		"certificate":     cert,
		"escaped \\n":     strings.ReplaceAll(publicPEM(t, rsaKey), "\n", `\n`),
		"with whitespace": "\n  " + publicPEM(t, rsaKey) + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			a := newAuth(t, authn.Config{JWTPublicKey: p, Now: c.Now}, nil)
			if _, err := a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey, "", claims()))); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestEC384KeyOnlyVerifiesES384(t *testing.T) {
	keys(t)
	c := newClock()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	a := newAuth(t, authn.Config{JWTPublicKey: publicPEM(t, k), Now: c.Now}, nil)
	if _, err := a.Authenticate(bearer(sign(t, jwa.ES384(), k, "", claims()))); err != nil {
		t.Fatal(err)
	}
	_, err = a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey, "", claims())))
	wantErr(t, err, agate.EUnauthenticated, `"RS256" is not accepted`)
}

func TestNewRefusesBadConfig(t *testing.T) {
	keys(t)
	rsaPriv := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}))
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  authn.Config
		want string
	}{
		{"require auth with nothing", authn.Config{RequireAuth: true}, "GATEWAY_JWT_SECRET"},
		{"bad PEM", authn.Config{JWTPublicKey: "not a key"}, "GATEWAY_JWT_PUBLIC_KEY"},
		{"private key", authn.Config{JWTPublicKey: rsaPriv}, "private"},
		{"small RSA key", authn.Config{JWTPublicKey: publicPEM(t, small)}, "2048"},
		{"JWKS URL not http", authn.Config{JWKSURL: "ftp://idp.example/jwks"}, "GATEWAY_JWKS_URL"},
		{"JWKS URL relative", authn.Config{JWKSURL: "/jwks.json"}, "GATEWAY_JWKS_URL"},
		{"public key and JWKS", authn.Config{JWTPublicKey: publicPEM(t, rsaKey), JWKSURL: "https://idp.example/jwks"}, "not both"},
		{"unknown algorithm", authn.Config{JWTSecret: secret, Algorithms: []string{"HS257"}}, "GATEWAY_JWT_ALGORITHMS"},
		{"ES256 with an RSA key", authn.Config{JWTPublicKey: publicPEM(t, rsaKey), Algorithms: []string{"ES256"}}, "GATEWAY_JWT_ALGORITHMS"},
		{"negative leeway", authn.Config{JWTSecret: secret, Leeway: -time.Second}, "leeway"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := authn.New(tc.cfg, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestAlgorithmsRestrictWhatIsAccepted(t *testing.T) {
	keys(t)
	c := newClock()
	a := newAuth(t, authn.Config{JWTSecret: secret, JWTPublicKey: publicPEM(t, rsaKey), Algorithms: []string{"rs256"}, Now: c.Now}, nil)
	if _, err := a.Authenticate(bearer(sign(t, jwa.RS256(), rsaKey, "", claims()))); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{
		sign(t, jwa.HS256(), []byte(secret), "", claims()),
		sign(t, jwa.PS256(), rsaKey, "", claims()),
	} {
		_, err := a.Authenticate(bearer(tok))
		wantErr(t, err, agate.EUnauthenticated, "is not accepted")
	}
}

func TestJWTRefusedWhenNoJWTKeyIsConfigured(t *testing.T) {
	a := newAuth(t, authn.Config{RequireAuth: true}, newKeyStore())
	_, err := a.Authenticate(bearer(sign(t, jwa.HS256(), []byte(secret), "", claims())))
	wantErr(t, err, agate.EUnauthenticated, "no JWT key")
}
