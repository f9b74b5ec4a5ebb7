// Package authn authenticates requests: JWTs (HMAC secret, PEM public key or JWKS), the
// gateway's own API keys, and, when authentication is not required, the anonymous
// principal of one tenant (the dev default, GATEWAY_REQUIRE_AUTH=false).
//
// Credentials are looked for, in order, in
//
//   - the Authorization header: "Bearer <token>", an API key when the token starts with
//     "sk_", a JWT otherwise;
//   - the X-API-Key header (an API key);
//   - the cookie "jwt" (a JWT);
//   - on GET requests only, for browsers' WebSocket and EventSource, which cannot set
//     headers: a "bearer.<token>" entry of the Sec-WebSocket-Protocol header, and the
//     query parameter access_token.
//
// A request that carries two different credentials is refused as ambiguous.
package authn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/agate-gw/agate"
)

// Config configures an Authenticator. The zero value authenticates every request as the
// anonymous principal of tenant "public" and verifies API keys that are sent (when a
// KeyStore is given); JWTs are refused until a key is configured.
type Config struct {
	// RequireAuth: when false, a request without credentials is the anonymous principal;
	// credentials that are present are still verified.
	RequireAuth bool
	// DefaultTenant is the tenant of the anonymous principal (default "public").
	DefaultTenant string
	// AnonymousScopes are the scopes of the anonymous principal (the dev profile passes
	// ["admin"]).
	AnonymousScopes []string

	// JWTSecret is the HMAC secret of HS256/384/512 tokens (GATEWAY_JWT_SECRET).
	JWTSecret string
	// JWTPublicKey is a PEM public key (RSA or EC, PKIX or PKCS#1) or certificate that
	// verifies RS*/PS*/ES* tokens (GATEWAY_JWT_PUBLIC_KEY). Literal "\n" sequences, as
	// environment variables often carry them, are read as line breaks.
	JWTPublicKey string
	// JWKSURL is an http(s) URL of a JSON Web Key Set (GATEWAY_JWKS_URL). Its keys are
	// cached, fetched again when a token names an unknown kid (at most once per
	// JWKSRefetch), and every JWKSRefresh by Run.
	JWKSURL string
	// JWKSRefetch is the least time between two fetches of the JWKS caused by unknown
	// kids (default 30s).
	JWKSRefetch time.Duration
	// Issuer and Audience, when set, must match the token's iss and aud claims
	// (GATEWAY_JWT_ISSUER, GATEWAY_JWT_AUDIENCE).
	Issuer, Audience string
	// Leeway is the clock skew allowed when checking exp, nbf and iat (default 30s).
	Leeway time.Duration
	// Algorithms are the accepted JWT algorithms (GATEWAY_JWT_ALGORITHMS). Default: HS256,
	// HS384, HS512 with a secret; RS*, PS* (RSA key) or ES* of the key's curve (EC key)
	// with a public key; RS*, PS* and ES* with a JWKS. "none" is never accepted, and a key
	// is only ever used with an algorithm of its own kind.
	Algorithms []string
	// TenantClaims name the claims that hold the tenant, in order of precedence (default
	// tenant, org, customer): the first present non-empty string wins, and a token with
	// none is refused.
	TenantClaims []string
	// HTTPClient fetches the JWKS (default: a client with a 30s timeout).
	HTTPClient *http.Client
	// Now is the clock (default time.Now); for tests.
	Now func() time.Time
}

// KeyStore is what API keys are checked against (the gateway's store implements it: see
// turn.Keys).
type KeyStore interface {
	// APIKey returns the key with id, revoked or not, or an error with code
	// agate.ENotFound.
	APIKey(ctx context.Context, id string) (agate.APIKey, error)
	// TouchAPIKey records that the key was used at at.
	TouchAPIKey(ctx context.Context, id string, at time.Time) error
}

// Defaults of Config.
const (
	DefaultTenant      = "public"
	DefaultJWKSRefetch = 30 * time.Second
	DefaultLeeway      = 30 * time.Second
	// JWKSRefresh is how often Run fetches the JWKS, whether or not a token asked.
	JWKSRefresh = 5 * time.Minute
	// jwksTimeout bounds one JWKS fetch; a request that triggered it waits that long at most.
	jwksTimeout = 5 * time.Second
	// maxToken bounds the length of a credential (a JWT is rarely above 2 KB).
	maxToken = 8 << 10
)

// defaultTenantClaims name the tenant when Config.TenantClaims is empty.
var defaultTenantClaims = []string{"tenant", "org", "customer"}

// Authenticator resolves the principal of a request from its credentials. It is safe for
// concurrent use.
type Authenticator struct {
	requireAuth  bool
	anon         agate.Principal
	tenantClaims []string
	leeway       time.Duration
	issuer       string
	audience     string
	now          func() time.Time
	log          *slog.Logger

	// JWT keys: at most one of static and jwks is set.
	secret []byte
	static any // *rsa.PublicKey or *ecdsa.PublicKey
	jwks   *jwks
	algs   map[string]alg // the accepted algorithms, by name

	keys     KeyStore // nil: API keys are refused
	verified *verifiedKeys
	touched  *touches
}

// New returns an Authenticator for cfg. keys may be nil: API keys are then refused. log
// may be nil. New fails when cfg is inconsistent (a bad PEM key, a JWKS URL that is not
// http(s), an algorithm without a key of its kind, RequireAuth with nothing to check
// credentials against); the error names the environment variable to fix.
func New(cfg Config, keys KeyStore, log *slog.Logger) (*Authenticator, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Authenticator{
		requireAuth:  cfg.RequireAuth,
		tenantClaims: slices.Clone(cfg.TenantClaims),
		leeway:       cfg.Leeway,
		issuer:       cfg.Issuer,
		audience:     cfg.Audience,
		now:          cfg.Now,
		log:          log,
		keys:         keys,
		verified:     newVerifiedKeys(verifiedEntries, verifiedTTL),
		touched:      &touches{last: make(map[string]time.Time)},
	}
	if a.now == nil {
		a.now = time.Now
	}
	tenant := cfg.DefaultTenant
	if tenant == "" {
		tenant = DefaultTenant
	}
	a.anon = agate.Principal{Tenant: tenant, Subject: "anonymous", Scopes: slices.Clone(cfg.AnonymousScopes), Via: agate.ViaAnonymous}
	if len(a.tenantClaims) == 0 {
		a.tenantClaims = defaultTenantClaims
	}
	if a.leeway == 0 {
		a.leeway = DefaultLeeway
	}
	if a.leeway < 0 {
		return nil, fmt.Errorf("JWT leeway %v is negative", cfg.Leeway)
	}

	if cfg.JWTSecret != "" {
		if strings.Contains(cfg.JWTSecret, "-----BEGIN") {
			return nil, errors.New("GATEWAY_JWT_SECRET holds a PEM block: a public key goes in GATEWAY_JWT_PUBLIC_KEY (it must never serve as an HMAC secret)")
		}
		a.secret = []byte(cfg.JWTSecret)
		if len(a.secret) < 32 {
			log.Warn("GATEWAY_JWT_SECRET is shorter than 32 bytes; HS256 wants at least 32 random bytes (RFC 7518 §3.2)")
		}
	}
	if cfg.JWTPublicKey != "" && cfg.JWKSURL != "" {
		return nil, errors.New("set one of GATEWAY_JWT_PUBLIC_KEY and GATEWAY_JWKS_URL, not both")
	}
	if cfg.JWTPublicKey != "" {
		k, err := parsePublicKey(cfg.JWTPublicKey)
		if err != nil {
			return nil, fmt.Errorf("GATEWAY_JWT_PUBLIC_KEY: %w", err)
		}
		a.static = k
	}
	if cfg.JWKSURL != "" {
		u, err := url.Parse(cfg.JWKSURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("GATEWAY_JWKS_URL %q is not an http(s) URL", cfg.JWKSURL)
		}
		if u.Scheme == "http" && !loopback(u.Hostname()) {
			log.Warn("GATEWAY_JWKS_URL is plain http: the keys that vouch for every token travel unauthenticated", "url", u.Redacted())
		}
		refetch := cfg.JWKSRefetch
		if refetch == 0 {
			refetch = DefaultJWKSRefetch
		}
		if refetch < 0 {
			return nil, fmt.Errorf("JWKS refetch interval %v is negative", refetch)
		}
		a.jwks = newJWKS(cfg.JWKSURL, cfg.HTTPClient, refetch, a.now, log)
	}

	algs, err := a.algorithms(cfg.Algorithms)
	if err != nil {
		return nil, err
	}
	a.algs = algs

	if cfg.RequireAuth && len(a.algs) == 0 && keys == nil {
		return nil, errors.New("GATEWAY_REQUIRE_AUTH=true, but nothing can check credentials: set GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWKS_URL, or give the gateway an API key store")
	}
	return a, nil
}

// algorithms checks the configured algorithms against the keys, or picks the default ones.
func (a *Authenticator) algorithms(names []string) (map[string]alg, error) {
	out := make(map[string]alg)
	if len(names) == 0 {
		for _, al := range supported {
			if a.hasKeyFor(al) {
				out[al.name] = al
			}
		}
		return out, nil
	}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if strings.EqualFold(n, "none") {
			return nil, errors.New(`GATEWAY_JWT_ALGORITHMS: "none" (unsigned tokens) is never accepted`)
		}
		al, ok := lookupAlg(strings.ToUpper(n))
		if !ok {
			return nil, fmt.Errorf("GATEWAY_JWT_ALGORITHMS: unknown algorithm %q (supported: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384/512)", n)
		}
		if !a.hasKeyFor(al) {
			return nil, fmt.Errorf("GATEWAY_JWT_ALGORITHMS: %s needs %s", al.name, al.needs())
		}
		out[al.name] = al
	}
	return out, nil
}

// hasKeyFor reports whether a key of al's kind is configured.
func (a *Authenticator) hasKeyFor(al alg) bool {
	switch {
	case al.family == familyHMAC:
		return a.secret != nil
	case a.jwks != nil:
		return true
	case a.static != nil:
		return al.fits(a.static)
	}
	return false
}

func loopback(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

// Authenticate returns the principal of r. With RequireAuth false, a request without
// credentials, or with a bearer token that is neither an API key ("sk_…") nor a JWT this
// gateway could verify, is the anonymous principal. Missing credentials (when RequireAuth), bad,
// expired, revoked or ambiguous ones give an error with code agate.EUnauthenticated and a
// message safe to show; a fault that keeps it from telling (JWKS unreachable, API key
// store down) gives agate.EUnavailable.
func (a *Authenticator) Authenticate(r *http.Request) (agate.Principal, error) {
	c, err := credentials(r)
	if err != nil {
		return agate.Principal{}, err
	}
	var p agate.Principal
	if !a.requireAuth && !c.apiKey && (len(a.algs) == 0 || strings.Count(c.token, ".") != 2) {
		// Not one of the gateway's credentials (an OpenAI SDK's placeholder key, say):
		// with authentication off such a caller is anonymous, as without one.
		c.token = ""
	}
	switch {
	case c.token == "":
		if a.requireAuth {
			return agate.Principal{}, agate.Errorf(agate.EUnauthenticated,
				"missing credentials: send Authorization: Bearer <token> or X-API-Key")
		}
		p = a.anon
		p.Scopes = slices.Clone(a.anon.Scopes)
		return p, nil
	case c.apiKey:
		p, err = a.apiKey(r.Context(), c.token)
	default:
		p, err = a.verifyJWT(r.Context(), c.token)
	}
	if err != nil && agate.ErrorCode(err) == agate.EUnauthenticated {
		a.log.Debug("credentials refused", "source", c.source, "error", err)
	}
	return p, err
}

// Run refreshes the JWKS every JWKSRefresh (the first time at once) until ctx ends, then
// returns nil. Without a JWKS it only waits for ctx. A failed fetch is logged; the keys
// fetched before stay in use.
func (a *Authenticator) Run(ctx context.Context) error {
	if a.jwks == nil {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(JWKSRefresh)
	defer t.Stop()
	for {
		if err := a.jwks.refresh(ctx, false); err != nil && ctx.Err() == nil {
			a.log.Warn("JWKS refresh failed; keeping the cached keys", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// credential is the one credential a request carries.
type credential struct {
	token  string // "" when the request has none
	apiKey bool
	source string // where it was found, for messages and logs
}

func unauthenticated(format string, args ...any) error {
	return agate.Errorf(agate.EUnauthenticated, format, args...)
}

// credentials finds the request's credential, refusing two different ones.
func credentials(r *http.Request) (credential, error) {
	var found []credential
	add := func(token, source string, apiKey bool) error {
		if len(token) > maxToken {
			return unauthenticated("credential in %s is too long", source)
		}
		found = append(found, credential{token: token, apiKey: apiKey, source: source})
		return nil
	}

	if hs := r.Header.Values("Authorization"); len(hs) > 0 {
		if len(hs) > 1 {
			return credential{}, unauthenticated("ambiguous credentials: more than one Authorization header")
		}
		scheme, token, _ := strings.Cut(strings.TrimSpace(hs[0]), " ")
		token = strings.TrimSpace(token)
		if !strings.EqualFold(scheme, "Bearer") || token == "" {
			return credential{}, unauthenticated(`the Authorization header must be "Bearer <token>"`)
		}
		if err := add(token, "Authorization header", strings.HasPrefix(token, apiKeyPrefix)); err != nil {
			return credential{}, err
		}
	}
	for _, v := range r.Header.Values("X-API-Key") {
		v = strings.TrimSpace(v)
		if v == "" {
			return credential{}, unauthenticated("the X-API-Key header is empty")
		}
		if err := add(v, "X-API-Key header", true); err != nil {
			return credential{}, err
		}
	}
	for _, c := range r.CookiesNamed("jwt") {
		if c.Value == "" { // a cleared cookie (after logging out) is no credential
			continue
		}
		if crossSite(r) {
			// A browser sends cookies with requests other sites make it send: a cookie
			// counts on a request that changes something only when it comes from a page
			// of this origin; otherwise it is ignored (a header may carry a credential).
			continue
		}
		if err := add(c.Value, "jwt cookie", false); err != nil {
			return credential{}, err
		}
	}
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			token, ok := strings.CutPrefix(strings.TrimSpace(p), "bearer.")
			if !ok {
				continue
			}
			if r.Method != http.MethodGet {
				return credential{}, unauthenticated("a bearer.<token> WebSocket subprotocol is accepted on GET requests only")
			}
			if token == "" {
				return credential{}, unauthenticated("the bearer. WebSocket subprotocol carries no token")
			}
			if err := add(token, "WebSocket subprotocol", strings.HasPrefix(token, apiKeyPrefix)); err != nil {
				return credential{}, err
			}
		}
	}
	if strings.Contains(r.URL.RawQuery, "access_token") {
		for _, token := range r.URL.Query()["access_token"] {
			if r.Method != http.MethodGet {
				return credential{}, unauthenticated("the access_token query parameter is accepted on GET requests only; send an Authorization header")
			}
			if token == "" {
				return credential{}, unauthenticated("the access_token query parameter is empty")
			}
			if err := add(token, "access_token query parameter", strings.HasPrefix(token, apiKeyPrefix)); err != nil {
				return credential{}, err
			}
		}
	}

	if len(found) == 0 {
		return credential{}, nil
	}
	for _, c := range found[1:] {
		if c.token != found[0].token {
			return credential{}, unauthenticated("ambiguous credentials: %s and %s differ; send one", found[0].source, c.source)
		}
		// The same token twice is one credential; but a JWT in a cookie must not become an
		// API key because it was also sent as X-API-Key: any API-key reading wins, and
		// verification decides.
		if c.apiKey {
			found[0].apiKey = true
		}
	}
	return found[0], nil
}

// crossSite reports whether r changes state (not GET, HEAD or OPTIONS) and a browser says
// it comes from a page of another origin (Sec-Fetch-Site, else Origin).
func crossSite(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site != "same-origin" && site != "none"
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false // not a browser's cross-site request: browsers send Origin on those
	}
	u, err := url.Parse(origin)
	return err != nil || u.Host != r.Host
}
