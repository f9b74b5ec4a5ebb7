package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/agate-gw/agate"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// Key families: a key is only ever used with an algorithm of its own family, so that the
// bytes of a public key can never serve as an HMAC secret (algorithm confusion).
const (
	familyHMAC = iota + 1
	familyRSA
	familyEC
)

// alg is an accepted JWS algorithm.
type alg struct {
	name   string
	family int
	curve  elliptic.Curve // the curve of ES* algorithms
	jwa    jwa.SignatureAlgorithm
}

// supported lists the algorithms the gateway can accept, in the order of defaults.
var supported = []alg{
	{name: "HS256", family: familyHMAC, jwa: jwa.HS256()},
	{name: "HS384", family: familyHMAC, jwa: jwa.HS384()},
	{name: "HS512", family: familyHMAC, jwa: jwa.HS512()},
	{name: "RS256", family: familyRSA, jwa: jwa.RS256()},
	{name: "RS384", family: familyRSA, jwa: jwa.RS384()},
	{name: "RS512", family: familyRSA, jwa: jwa.RS512()},
	{name: "PS256", family: familyRSA, jwa: jwa.PS256()},
	{name: "PS384", family: familyRSA, jwa: jwa.PS384()},
	{name: "PS512", family: familyRSA, jwa: jwa.PS512()},
	{name: "ES256", family: familyEC, curve: elliptic.P256(), jwa: jwa.ES256()},
	{name: "ES384", family: familyEC, curve: elliptic.P384(), jwa: jwa.ES384()},
	{name: "ES512", family: familyEC, curve: elliptic.P521(), jwa: jwa.ES512()},
}

func lookupAlg(name string) (alg, bool) {
	for _, al := range supported {
		if al.name == name {
			return al, true
		}
	}
	return alg{}, false
}

// fits reports whether key (a public key) may verify al: an RSA key RS*/PS*, an EC key
// the ES* of its curve. HMAC secrets are never handled here.
func (al alg) fits(key any) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return al.family == familyRSA
	case *ecdsa.PublicKey:
		return al.family == familyEC && k.Curve == al.curve
	}
	return false
}

// needs says what key al needs, for configuration errors.
func (al alg) needs() string {
	switch al.family {
	case familyHMAC:
		return "GATEWAY_JWT_SECRET"
	case familyRSA:
		return "an RSA key in GATEWAY_JWT_PUBLIC_KEY, or GATEWAY_JWKS_URL"
	}
	return fmt.Sprintf("an EC %s key in GATEWAY_JWT_PUBLIC_KEY, or GATEWAY_JWKS_URL", al.curve.Params().Name)
}

// minRSABits is the smallest RSA modulus accepted (NIST SP 800-131A).
const minRSABits = 2048

// parsePublicKey reads a PEM public key (PKIX or PKCS#1) or certificate.
func parsePublicKey(s string) (any, error) {
	if !strings.Contains(s, "\n") {
		s = strings.ReplaceAll(s, `\n`, "\n")
	}
	block, rest := pem.Decode([]byte(strings.TrimSpace(s)))
	if block == nil {
		return nil, errors.New("not a PEM block (want -----BEGIN PUBLIC KEY-----)")
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return nil, errors.New("more than one PEM block; give one public key")
	}
	var key any
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		key, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		cert, err = x509.ParseCertificate(block.Bytes)
		if err == nil {
			key = cert.PublicKey
		}
	default:
		if strings.Contains(block.Type, "PRIVATE") {
			return nil, fmt.Errorf("a %s: give the public key, never the private one", block.Type)
		}
		return nil, fmt.Errorf("unexpected PEM block %q (want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", strings.ToLower(block.Type), err)
	}
	return checkPublicKey(key)
}

// checkPublicKey accepts RSA keys of at least minRSABits and EC keys of P-256/384/521.
func checkPublicKey(key any) (any, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key of %d bits; at least %d are needed", k.N.BitLen(), minRSABits)
		}
		return k, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return k, nil
		}
		return nil, fmt.Errorf("EC key on unsupported curve %s", k.Curve.Params().Name)
	}
	return nil, fmt.Errorf("unsupported key type %T (want RSA or EC)", key)
}

// header is the part of a JWS protected header that picks the key.
type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

// verifyJWT verifies token and returns its principal.
func (a *Authenticator) verifyJWT(ctx context.Context, token string) (agate.Principal, error) {
	if len(a.algs) == 0 {
		return agate.Principal{}, unauthenticated("JWTs are not accepted: no JWT key is configured")
	}
	h, err := parseHeader(token)
	if err != nil {
		return agate.Principal{}, agate.Wrap(agate.EUnauthenticated, err, "malformed token")
	}
	if strings.EqualFold(h.Alg, "none") {
		return agate.Principal{}, unauthenticated("unsigned tokens (alg none) are not accepted")
	}
	al, ok := a.algs[h.Alg]
	if !ok {
		return agate.Principal{}, unauthenticated("token algorithm %q is not accepted", clip(h.Alg))
	}
	key, err := a.keyFor(ctx, al, h.Kid)
	if err != nil {
		return agate.Principal{}, err
	}

	opts := []jwt.ParseOption{
		// One WithKey and no other verification option: jwt.Parse takes its fast path,
		// which also checks that the header's alg is al (v3's jws.Verify would not).
		jwt.WithKey(al.jwa, key),
		jwt.WithAcceptableSkew(a.leeway),
		jwt.WithClock(jwt.ClockFunc(a.now)),
	}
	if a.issuer != "" {
		opts = append(opts, jwt.WithIssuer(a.issuer))
	}
	if a.audience != "" {
		opts = append(opts, jwt.WithAudience(a.audience))
	}
	tok, err := jwt.Parse([]byte(token), opts...)
	if err != nil {
		return agate.Principal{}, agate.Wrap(agate.EUnauthenticated, err, reason(err))
	}
	if _, ok := tok.Expiration(); !ok {
		// A token that never expires cannot be taken back: refused.
		return agate.Principal{}, unauthenticated("token without exp (expiry) is not accepted")
	}
	return a.principal(tok)
}

// keyFor returns the key that verifies a token of algorithm al with key id kid.
func (a *Authenticator) keyFor(ctx context.Context, al alg, kid string) (any, error) {
	switch {
	case al.family == familyHMAC:
		return a.secret, nil
	case a.jwks != nil:
		return a.jwks.key(ctx, al, kid)
	case a.static != nil && al.fits(a.static):
		return a.static, nil
	}
	// Not reached: a.algs only holds algorithms with a key of their kind.
	return nil, unauthenticated("no key for token algorithm %s", al.name)
}

// parseHeader decodes the protected header of a compact JWS.
func parseHeader(token string) (header, error) {
	if strings.Count(token, ".") != 2 {
		return header{}, errors.New("not a compact JWS (three dot-separated parts)")
	}
	enc, _, _ := strings.Cut(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return header{}, fmt.Errorf("header: %w", err)
	}
	var h header
	if err := json.Unmarshal(raw, &h); err != nil {
		return header{}, fmt.Errorf("header: %w", err)
	}
	if h.Alg == "" {
		return header{}, errors.New(`header has no "alg"`)
	}
	return h, nil
}

// reason turns a jwx error into a short message safe to show.
func reason(err error) string {
	switch {
	case errors.Is(err, jwt.TokenExpiredError()):
		return "token expired"
	case errors.Is(err, jwt.TokenNotYetValidError()):
		return "token not valid yet (nbf)"
	case errors.Is(err, jwt.InvalidIssuedAtError()):
		return "token issued in the future (iat)"
	case errors.Is(err, jwt.InvalidIssuerError()):
		return "wrong issuer"
	case errors.Is(err, jwt.InvalidAudienceError()):
		return "wrong audience"
	case errors.Is(err, jws.VerifyError()), errors.Is(err, jws.VerificationError()):
		return "bad signature"
	case errors.Is(err, jwt.ValidateError()):
		return "invalid token claims"
	}
	return "malformed token"
}

// principal reads the principal from a verified token's claims.
func (a *Authenticator) principal(tok jwt.Token) (agate.Principal, error) {
	sub, _ := tok.Subject()
	if sub == "" {
		return agate.Principal{}, unauthenticated("token has no subject (sub)")
	}
	var tenant string
	for _, name := range a.tenantClaims {
		var v any
		if tok.Get(name, &v) != nil {
			continue
		}
		if s, ok := v.(string); ok && s != "" {
			tenant = s
			break
		}
	}
	if tenant == "" {
		return agate.Principal{}, unauthenticated("token names no tenant (looked for claims %s)", strings.Join(a.tenantClaims, ", "))
	}
	scopes, err := scopes(tok)
	if err != nil {
		return agate.Principal{}, err
	}
	return agate.Principal{Tenant: tenant, Subject: sub, Scopes: scopes, Via: agate.ViaJWT}, nil
}

// scopes reads "scope" (a space-separated string, RFC 8693) or, when absent, "scp" (a
// string or an array of strings, as Azure AD and Okta write it).
func scopes(tok jwt.Token) ([]string, error) {
	var v any
	if tok.Get("scope", &v) == nil {
		s, ok := v.(string)
		if !ok {
			return nil, unauthenticated("claim scope must be a space-separated string")
		}
		return strings.Fields(s), nil
	}
	if tok.Get("scp", &v) != nil {
		return nil, nil
	}
	switch s := v.(type) {
	case string:
		return strings.Fields(s), nil
	case []any:
		out := make([]string, 0, len(s))
		for _, e := range s {
			str, ok := e.(string)
			if !ok {
				return nil, unauthenticated("claim scp must be a string or an array of strings")
			}
			out = append(out, str)
		}
		return out, nil
	case []string:
		return s, nil
	}
	return nil, unauthenticated("claim scp must be a string or an array of strings")
}

// clip shortens a value from a token before it goes into a message.
func clip(s string) string {
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}
