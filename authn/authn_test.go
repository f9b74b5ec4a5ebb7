package authn_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/authn"
	"github.com/google/go-cmp/cmp"
	"github.com/lestrrat-go/jwx/v3/jwa"
)

func TestAnonymousWhenAuthIsNotRequired(t *testing.T) {
	a := newAuth(t, authn.Config{AnonymousScopes: []string{"admin"}}, nil)
	got, err := a.Authenticate(httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil))
	if err != nil {
		t.Fatal(err)
	}
	want := agate.Principal{Tenant: "public", Subject: "anonymous", Scopes: []string{"admin"}, Via: agate.ViaAnonymous}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("principal (-want +got):\n%s", diff)
	}
	got.Scopes[0] = "changed" // a caller cannot change the next principal
	if got, _ := a.Authenticate(httptest.NewRequest(http.MethodGet, "/", nil)); got.Scopes[0] != "admin" {
		t.Errorf("scopes = %v after a caller changed its copy", got.Scopes)
	}

	b := newAuth(t, authn.Config{DefaultTenant: "dev"}, nil)
	if got, _ := b.Authenticate(httptest.NewRequest(http.MethodGet, "/", nil)); got.Tenant != "dev" {
		t.Errorf("tenant = %q, want dev", got.Tenant)
	}
}

func TestMissingCredentialsWhenAuthIsRequired(t *testing.T) {
	a := newAuth(t, authn.Config{RequireAuth: true, JWTSecret: secret}, nil)
	_, err := a.Authenticate(httptest.NewRequest(http.MethodGet, "/v1/sessions", nil))
	wantErr(t, err, agate.EUnauthenticated, "missing credentials")
}

func TestCredentialsAreVerifiedEvenWhenAuthIsNotRequired(t *testing.T) {
	token, key := newKey(t)
	c := newClock()
	a := newAuth(t, authn.Config{JWTSecret: secret, Now: c.Now}, newKeyStore(key))
	for name, r := range map[string]*http.Request{
		"bad JWT":     bearer(sign(t, jwa.HS256(), []byte("not the secret, but long enough.."), "", claims())),
		"expired JWT": bearer(sign(t, jwa.HS256(), []byte(secret), "", with("exp", t0.Add(-time.Hour)))),
		"bad API key": xAPIKey(token[:len(token)-4] + "AAAA"),
		"bad Authorization": func() *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header.Set("Authorization", "Basic dXNlcjpwYXNz")
			return r
		}(),
	} {
		_, err := a.Authenticate(r)
		if agate.ErrorCode(err) != agate.EUnauthenticated {
			t.Errorf("%s: err = %v, want unauthenticated, not the anonymous principal", name, err)
		}
	}
	p, err := a.Authenticate(bearer(sign(t, jwa.HS256(), []byte(secret), "", claims())))
	if err != nil || p.Via != agate.ViaJWT || p.Tenant != "acme" {
		t.Fatalf("valid JWT: %+v, %v", p, err)
	}
}

func TestCredentialSources(t *testing.T) {
	c := newClock()
	a := newAuth(t, authn.Config{RequireAuth: true, JWTSecret: secret, Now: c.Now}, nil)
	tok := sign(t, jwa.HS256(), []byte(secret), "", claims())
	req := func(method, target string, set func(*http.Request)) *http.Request {
		r := httptest.NewRequest(method, target, nil)
		if set != nil {
			set(r)
		}
		return r
	}
	for _, tc := range []struct {
		name string
		r    *http.Request
		err  string // "" accepted
	}{
		{"Authorization", req("POST", "/v1/chat", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }), ""},
		{"Authorization lower case", req("POST", "/v1/chat", func(r *http.Request) { r.Header.Set("Authorization", "bearer  "+tok) }), ""},
		{"cookie", req("POST", "/v1/chat", func(r *http.Request) { r.AddCookie(&http.Cookie{Name: "jwt", Value: tok}) }), ""},
		{"WebSocket subprotocol", req("GET", "/v1/ws", func(r *http.Request) {
			r.Header.Set("Sec-WebSocket-Protocol", "agate.v1, bearer."+tok)
		}), ""},
		{"WebSocket subprotocol, own header", req("GET", "/v1/ws", func(r *http.Request) {
			r.Header.Add("Sec-WebSocket-Protocol", "agate.v1")
			r.Header.Add("Sec-WebSocket-Protocol", "bearer."+tok)
		}), ""},
		{"access_token on GET", req("GET", "/v1/sessions/x/events?access_token="+tok, nil), ""},
		{"access_token on POST", req("POST", "/v1/chat?access_token="+tok, nil), "GET requests only"},
		{"subprotocol on POST", req("POST", "/v1/chat", func(r *http.Request) {
			r.Header.Set("Sec-WebSocket-Protocol", "bearer."+tok)
		}), "GET requests only"},
		{"other subprotocols only", req("GET", "/v1/ws", func(r *http.Request) {
			r.Header.Set("Sec-WebSocket-Protocol", "agate.v1")
		}), "missing credentials"},
		{"empty cookie", req("GET", "/", func(r *http.Request) { r.AddCookie(&http.Cookie{Name: "jwt", Value: ""}) }), "missing credentials"},
		{"Basic", req("GET", "/", func(r *http.Request) { r.Header.Set("Authorization", "Basic dXNlcjpwYXNz") }), "Bearer <token>"},
		{"Bearer without token", req("GET", "/", func(r *http.Request) { r.Header.Set("Authorization", "Bearer ") }), "Bearer <token>"},
		{"too long", req("GET", "/", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+string(make([]byte, 9000))) }), "too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := a.Authenticate(tc.r)
			if tc.err != "" {
				wantErr(t, err, agate.EUnauthenticated, tc.err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Subject != "alice" || p.Via != agate.ViaJWT {
				t.Errorf("principal = %+v", p)
			}
		})
	}

	t.Run("access_token on POST is not anonymous either", func(t *testing.T) {
		b := newAuth(t, authn.Config{JWTSecret: secret, Now: c.Now}, nil)
		_, err := b.Authenticate(req("POST", "/v1/chat?access_token="+tok, nil))
		wantErr(t, err, agate.EUnauthenticated, "GET requests only")
	})
}

func TestAmbiguousCredentialsAreRefused(t *testing.T) {
	c := newClock()
	apiToken, key := newKey(t)
	a := newAuth(t, authn.Config{RequireAuth: true, JWTSecret: secret, Now: c.Now}, newKeyStore(key))
	tok := sign(t, jwa.HS256(), []byte(secret), "", claims())
	tok2 := sign(t, jwa.HS256(), []byte(secret), "", with("sub", "bob"))

	for _, tc := range []struct {
		name string
		set  func(*http.Request)
	}{
		{"Authorization and cookie", func(r *http.Request) {
			r.Header.Set("Authorization", "Bearer "+tok)
			r.AddCookie(&http.Cookie{Name: "jwt", Value: tok2})
		}},
		{"Authorization and X-API-Key", func(r *http.Request) {
			r.Header.Set("Authorization", "Bearer "+tok)
			r.Header.Set("X-API-Key", apiToken)
		}},
		{"two Authorization headers", func(r *http.Request) {
			r.Header.Add("Authorization", "Bearer "+tok)
			r.Header.Add("Authorization", "Bearer "+tok)
		}},
		{"cookie and access_token", func(r *http.Request) {
			r.AddCookie(&http.Cookie{Name: "jwt", Value: tok})
			r.URL.RawQuery = "access_token=" + tok2
		}},
		{"two subprotocol tokens", func(r *http.Request) {
			r.Header.Set("Sec-WebSocket-Protocol", "bearer."+tok+", bearer."+tok2)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/v1/ws", nil)
			tc.set(r)
			_, err := a.Authenticate(r)
			wantErr(t, err, agate.EUnauthenticated, "ambiguous")
		})
	}

	t.Run("the same token twice is one credential", func(t *testing.T) {
		r := httptest.NewRequest(http.MethodGet, "/v1/ws", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		r.AddCookie(&http.Cookie{Name: "jwt", Value: tok})
		if _, err := a.Authenticate(r); err != nil {
			t.Fatal(err)
		}
	})
}

// TestForeignBearerTokenIsAnonymousWhenAuthIsOff: SDKs insist on sending some API key; with
// authentication off, a token that is not one of the gateway's is no credential at all.
func TestForeignBearerTokenIsAnonymousWhenAuthIsOff(t *testing.T) {
	a, err := authn.New(authn.Config{DefaultTenant: "public"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("POST", "/v1/chat/completions", nil)
	r.Header.Set("Authorization", "Bearer sk-placeholder")
	p, err := a.Authenticate(r)
	if err != nil || p.Via != agate.ViaAnonymous || p.Tenant != "public" {
		t.Fatalf("Authenticate = %+v, %v; want the anonymous principal", p, err)
	}
	strict, err := authn.New(authn.Config{RequireAuth: true, JWTSecret: strings.Repeat("s", 32)}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := strict.Authenticate(r); agate.ErrorCode(err) != agate.EUnauthenticated {
		t.Fatalf("with auth required: %v, want %s", err, agate.EUnauthenticated)
	}
}

// TestJWTCookieIsRefusedOnCrossSiteWrites: a page of another site can make a browser send
// the cookie; on a request that changes state it counts only from this origin.
func TestJWTCookieIsRefusedOnCrossSiteWrites(t *testing.T) {
	secret := strings.Repeat("k", 32)
	a, err := authn.New(authn.Config{RequireAuth: true, JWTSecret: secret}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwa.HS256(), []byte(secret), "", with("exp", time.Now().Add(time.Hour), "iat", time.Now().Add(-time.Minute), "iss", nil, "aud", nil))
	for _, c := range []struct {
		method, origin, fetchSite string
		ok                        bool
	}{
		{"GET", "https://evil.example", "cross-site", true}, // reads: the page cannot see the answer
		{"POST", "", "", true},                              // not a browser
		{"POST", "http://gw.example", "", true},             // same origin
		{"POST", "https://evil.example", "", false},
		{"POST", "", "cross-site", false},
		{"DELETE", "http://gw.example", "same-origin", true},
	} {
		r := httptest.NewRequest(c.method, "http://gw.example/v1/session/message", nil)
		r.AddCookie(&http.Cookie{Name: "jwt", Value: tok})
		if c.origin != "" {
			r.Header.Set("Origin", c.origin)
		}
		if c.fetchSite != "" {
			r.Header.Set("Sec-Fetch-Site", c.fetchSite)
		}
		_, err := a.Authenticate(r)
		if got := err == nil; got != c.ok {
			t.Errorf("%s with Origin %q, Sec-Fetch-Site %q: err %v, want ok=%v", c.method, c.origin, c.fetchSite, err, c.ok)
		}
	}
}
