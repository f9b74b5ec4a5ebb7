package authn

import (
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agate-gw/agate"
)

// API key tokens are "sk_<id>_<secret>": id is 16 characters [a-z0-9], secret 32 random
// bytes in unpadded base64url (43 characters, which may include "_": the id's fixed length
// is what splits the token).
const (
	apiKeyPrefix = "sk_"
	idLen        = 16
	secretBytes  = 32
	secretLen    = 43 // base64.RawURLEncoding.EncodedLen(secretBytes)
)

// PBKDF2 parameters of new keys.
//
// The secret is 256 random bits, not a password: nobody can search that space, however
// fast the hash, so the iteration count is not what protects a leaked hash the way it
// would a password (where OWASP asks for 600,000). 10,000 iterations (≈2–4 ms of one
// core) keep the stored form a standard, self-describing password hash that would still
// resist a search should a weaker secret ever be stored, at a cost that is paid once per
// token and process every verifiedTTL thanks to the cache of verified tokens. The count
// is stored with each hash, so it can be raised without invalidating existing keys.
const (
	pbkdf2Iterations = 10000
	pbkdf2SaltLen    = 16
	pbkdf2KeyLen     = 32
	hashScheme       = "pbkdf2-sha256"
	maxIterations    = 10_000_000 // refuse stored hashes that would stall a request
)

// The cache of verified API key tokens.
const (
	verifiedEntries = 10_000
	verifiedTTL     = 5 * time.Minute
	touchEvery      = time.Minute
)

var b64 = base64.RawStdEncoding

// NewAPIKey makes a new API key of tenant. It returns the token, to be shown to the
// client once, and the key to store, whose Hash is
// "pbkdf2-sha256$<iterations>$<salt b64>$<key b64>" (standard base64, unpadded). An empty
// tenant gives agate.EInvalid.
func NewAPIKey(tenant, label string, scopes []string, createdBy string, now time.Time) (token string, key agate.APIKey, err error) {
	if tenant == "" {
		return "", agate.APIKey{}, agate.Errorf(agate.EInvalid, "an API key needs a tenant")
	}
	id := strings.ToLower(rand.Text()[:idLen]) // base32: [a-z2-7], 80 random bits
	secret := make([]byte, secretBytes)
	rand.Read(secret)
	enc := base64.RawURLEncoding.EncodeToString(secret)
	hash, err := hashSecret(enc, pbkdf2Iterations)
	if err != nil {
		return "", agate.APIKey{}, err
	}
	if scopes == nil {
		scopes = []string{}
	}
	key = agate.APIKey{
		ID: id, Tenant: tenant, Label: label, Scopes: slices.Clone(scopes), Hash: hash,
		CreatedBy: createdBy, CreatedAt: now.UTC(),
	}
	return apiKeyPrefix + id + "_" + enc, key, nil
}

// ParseAPIKey splits a token "sk_<id>_<secret>" into its id and secret; ok is false when
// token does not have that form.
func ParseAPIKey(token string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(token, apiKeyPrefix)
	if !ok || len(rest) < idLen+1+secretLen || len(rest) > idLen+1+4*secretLen || rest[idLen] != '_' {
		return "", "", false
	}
	id, secret = rest[:idLen], rest[idLen+1:]
	for i := range len(id) {
		if c := id[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return "", "", false
		}
	}
	for i := range len(secret) {
		c := secret[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			return "", "", false
		}
	}
	return id, secret, true
}

func hashSecret(secret string, iterations int) (string, error) {
	salt := make([]byte, pbkdf2SaltLen)
	rand.Read(salt)
	dk, err := pbkdf2.Key(sha256.New, secret, salt, iterations, pbkdf2KeyLen)
	if err != nil {
		return "", fmt.Errorf("pbkdf2: %w", err)
	}
	return hashScheme + "$" + strconv.Itoa(iterations) + "$" + b64.EncodeToString(salt) + "$" + b64.EncodeToString(dk), nil
}

// checkSecret reports whether secret matches hash. A hash it cannot read is an error.
func checkSecret(hash, secret string) (bool, error) {
	parts := strings.Split(hash, "$")
	if len(parts) != 4 || parts[0] != hashScheme {
		return false, errors.New("API key hash: unknown format")
	}
	iter, err := strconv.Atoi(parts[1])
	if err != nil || iter < 1 || iter > maxIterations {
		return false, errors.New("API key hash: bad iteration count")
	}
	salt, err := b64.DecodeString(parts[2])
	if err != nil {
		return false, fmt.Errorf("API key hash: salt: %w", err)
	}
	want, err := b64.DecodeString(parts[3])
	if err != nil || len(want) < 16 {
		return false, errors.New("API key hash: bad derived key")
	}
	got, err := pbkdf2.Key(sha256.New, secret, salt, iter, len(want))
	if err != nil {
		return false, fmt.Errorf("pbkdf2: %w", err)
	}
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// errBadKey is the one answer to an unknown id and a wrong secret alike.
var errBadKey = agate.Errorf(agate.EUnauthenticated, "invalid API key")

// apiKey verifies an API key token and returns its principal: the key's tenant and
// scopes, subject "apikey:<id>". The key is read from the store on every call, so that a
// revocation is effective at once on every replica; only the PBKDF2 check is cached.
func (a *Authenticator) apiKey(ctx context.Context, token string) (agate.Principal, error) {
	if a.keys == nil {
		return agate.Principal{}, unauthenticated("API keys are not accepted here")
	}
	id, secret, ok := ParseAPIKey(token)
	if !ok {
		return agate.Principal{}, errBadKey
	}
	k, err := a.keys.APIKey(ctx, id)
	switch {
	case agate.ErrorCode(err) == agate.ENotFound:
		return agate.Principal{}, errBadKey
	case err != nil:
		return agate.Principal{}, agate.Wrap(agate.EUnavailable, err, "cannot check the API key: the key store is unavailable")
	case k.ID != id:
		return agate.Principal{}, errBadKey
	}

	now := a.now()
	sum := sha256.Sum256([]byte(token))
	if !a.verified.has(sum, k.Hash, now) {
		ok, err := checkSecret(k.Hash, secret)
		if err != nil {
			return agate.Principal{}, agate.Wrap(agate.EInternal, fmt.Errorf("key %s: %w", id, err), "cannot check the API key")
		}
		if !ok {
			return agate.Principal{}, errBadKey
		}
		a.verified.add(sum, k.Hash, now)
	}
	// Revocation is told only to a caller who holds the secret.
	if k.RevokedAt != nil {
		return agate.Principal{}, unauthenticated("API key revoked")
	}

	if a.touched.due(id, now) {
		if err := a.keys.TouchAPIKey(ctx, id, now); err != nil {
			a.log.Warn("record API key use", "key_id", id, "tenant", k.Tenant, "error", err)
		}
	}
	return agate.Principal{
		Tenant: k.Tenant, Subject: "apikey:" + id, Scopes: k.Scopes, Via: agate.ViaAPIKey, KeyID: id,
	}, nil
}

// verifiedKeys remembers tokens whose secret matched, by SHA-256 of the whole token, for
// ttl and up to max of them. An entry holds the stored hash it was checked against, so a
// key whose hash changes is checked again.
type verifiedKeys struct {
	mu  sync.Mutex
	m   map[[sha256.Size]byte]verifiedKey
	max int
	ttl time.Duration
}

type verifiedKey struct {
	hash  string
	until time.Time
}

func newVerifiedKeys(maxEntries int, ttl time.Duration) *verifiedKeys {
	return &verifiedKeys{m: make(map[[sha256.Size]byte]verifiedKey), max: maxEntries, ttl: ttl}
}

func (v *verifiedKeys) has(sum [sha256.Size]byte, hash string, now time.Time) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.m[sum]
	if ok && (e.hash != hash || !now.Before(e.until)) {
		delete(v.m, sum)
		return false
	}
	return ok
}

func (v *verifiedKeys) add(sum [sha256.Size]byte, hash string, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.m) >= v.max {
		for s, e := range v.m {
			if !now.Before(e.until) {
				delete(v.m, s)
			}
		}
		// Still full: drop entries at random (map order) until there is room. Only tokens
		// that verified get here, so an attacker cannot flood the cache.
		for s := range v.m {
			if len(v.m) < v.max {
				break
			}
			delete(v.m, s)
		}
	}
	v.m[sum] = verifiedKey{hash: hash, until: now.Add(v.ttl)}
}

// touches throttles TouchAPIKey to once per touchEvery per key, in process.
type touches struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// due reports whether key id should be touched now, and if so records it as touched.
func (t *touches) due(id string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l, ok := t.last[id]; ok && now.Sub(l) < touchEvery {
		return false
	}
	if len(t.last) >= verifiedEntries {
		for k, l := range t.last {
			if now.Sub(l) >= touchEvery {
				delete(t.last, k)
			}
		}
		if len(t.last) >= verifiedEntries {
			clear(t.last) // worst case: a few extra touches
		}
	}
	t.last[id] = now
	return true
}
