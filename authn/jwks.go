package authn

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agate-gw/agate"
	"github.com/lestrrat-go/jwx/v3/jwk"
)

// jwks caches the keys of a JSON Web Key Set.
//
// It is a small cache of its own rather than jwk.Cache (httprc): what the gateway needs
// is a refetch on demand when a token names an unknown kid, rate-limited, with one fetch
// shared by the requests that wait for it, and the outcome of the last fetch kept so
// that "the endpoint is down" (503) can be told from "no such key" (401). httprc
// refreshes on its own schedule, owns goroutines started by NewCache, and reports fetch
// failures through a callback, which would leave both the rate limit and that
// distinction to be rebuilt around it. It does the GET itself instead of calling
// jwk.Fetch, which takes no parse options: a key of a type jwx cannot parse must not
// make the whole set unusable. Keys are exported to raw keys once per fetch, so that
// jwt.Parse takes its fast path.
type jwks struct {
	url     string
	client  *http.Client
	refetch time.Duration // least time between two fetches asked for by unknown kids
	now     func() time.Time
	log     *slog.Logger

	keys atomic.Pointer[keySet] // nil until a fetch succeeds

	mu       sync.Mutex
	lastTry  time.Time     // start of the last fetch (zero: none yet)
	lastErr  error         // outcome of the last fetch
	inflight chan struct{} // closed when the running fetch ends; nil when none runs
}

// keySet is the usable content of one fetch of the JWKS.
type keySet struct {
	keys []jwksKey
}

type jwksKey struct {
	kid string
	alg string // the key's "alg", or "" when it names none
	key any    // *rsa.PublicKey or *ecdsa.PublicKey
}

func newJWKS(url string, client *http.Client, refetch time.Duration, now func() time.Time, log *slog.Logger) *jwks {
	if client == nil {
		client = jwk.DefaultHTTPClient()
	} else {
		// Adds a timeout when the client has none, and refuses https→http redirects.
		client = jwk.WrapHTTPClientDefaults(client)
	}
	return &jwks{url: url, client: client, refetch: refetch, now: now, log: log}
}

// lookup outcomes of keySet.find
const (
	found = iota
	unknownKid
	noFit
)

// find returns the key with kid that fits al. A token without kid may use the set's only
// key that fits al.
func (s *keySet) find(al alg, kid string) (any, int) {
	if s == nil {
		return nil, unknownKid
	}
	var match any
	n, kidSeen := 0, false
	for _, k := range s.keys {
		if kid != "" && k.kid != kid {
			continue
		}
		kidSeen = true
		if (k.alg != "" && k.alg != al.name) || !al.fits(k.key) {
			continue
		}
		match = k.key
		n++
	}
	switch {
	case n == 1 || (n > 1 && kid != ""):
		return match, found
	case n > 1:
		return nil, noFit // several keys and no kid to choose
	case kidSeen && kid != "":
		return nil, noFit
	}
	return nil, unknownKid
}

// key returns the key for a token of algorithm al with key id kid, fetching the set again
// when the kid is unknown (at most once per refetch interval). It fails with
// agate.EUnavailable when no cached key fits and the JWKS cannot be fetched (now, or the
// last time it was tried), and with agate.EUnauthenticated when the set has no such key.
func (j *jwks) key(ctx context.Context, al alg, kid string) (any, error) {
	if k, r := j.keys.Load().find(al, kid); r == found {
		return k, nil
	} else if r == noFit {
		return nil, misfit(al, kid)
	}
	err := j.refresh(ctx, true)
	k, r := j.keys.Load().find(al, kid)
	switch {
	case r == found:
		return k, nil
	case err != nil:
		return nil, agate.Wrap(agate.EUnavailable, err, "cannot verify the token: the key set (JWKS) is unreachable")
	case r == noFit:
		return nil, misfit(al, kid)
	case kid == "":
		return nil, unauthenticated("no key fits the token's algorithm %s", al.name)
	}
	return nil, unauthenticated("unknown key id (kid) %q", clip(kid))
}

func misfit(al alg, kid string) error {
	if kid == "" {
		return unauthenticated("token has no key id (kid) and several keys fit %s", al.name)
	}
	return unauthenticated("key %q does not fit the token's algorithm %s", clip(kid), al.name)
}

// refresh fetches the set and returns the outcome. A fetch already running is joined, not
// repeated. When onDemand and the last fetch started less than refetch ago, nothing is
// fetched and the outcome of that last fetch is returned.
func (j *jwks) refresh(ctx context.Context, onDemand bool) error {
	j.mu.Lock()
	if ch := j.inflight; ch != nil {
		j.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		j.mu.Lock()
		defer j.mu.Unlock()
		return j.lastErr
	}
	if onDemand && !j.lastTry.IsZero() && j.now().Sub(j.lastTry) < j.refetch {
		defer j.mu.Unlock()
		return j.lastErr
	}
	ch := make(chan struct{})
	j.inflight, j.lastTry = ch, j.now()
	j.mu.Unlock()

	// The fetch serves every request waiting for it: it does not end with the request
	// that started it.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), jwksTimeout)
	set, err := j.fetch(fctx)
	cancel()

	j.mu.Lock()
	j.lastErr = err
	if err == nil {
		j.keys.Store(set)
	}
	j.inflight = nil
	close(ch)
	j.mu.Unlock()
	return err
}

// maxJWKS bounds the size of a JWKS response.
const maxJWKS = 1 << 20

// fetch gets and parses the set, keeping the keys usable for signatures.
func (j *jwks) fetch(ctx context.Context) (*keySet, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	res, err := j.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch JWKS: %s answered %s", req.URL.Redacted(), res.Status)
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, maxJWKS+1))
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	if len(body) > maxJWKS {
		return nil, fmt.Errorf("fetch JWKS: response over %d bytes", maxJWKS)
	}
	// Keys that cannot be parsed (a type this version does not know) are dropped, not
	// fatal: the others stay usable.
	set, err := jwk.Parse(body, jwk.WithIgnoreParseError(true))
	if err != nil {
		return nil, fmt.Errorf("parse JWKS: %w", err)
	}
	out := &keySet{}
	for i := range set.Len() {
		k, _ := set.Key(i)
		kid, _ := k.KeyID()
		if use, ok := k.KeyUsage(); ok && use != "" && use != jwk.ForSignature.String() {
			continue
		}
		var algName string
		if v, ok := k.Algorithm(); ok {
			algName = v.String()
		}
		raw, err := jwk.PublicRawKeyOf(k)
		if err == nil {
			raw, err = checkPublicKey(raw) // symmetric keys never come from a JWKS
		}
		if err != nil {
			j.log.Warn("JWKS key skipped", "kid", kid, "error", err)
			continue
		}
		out.keys = append(out.keys, jwksKey{kid: kid, alg: algName, key: raw})
	}
	if len(out.keys) == 0 {
		j.log.Warn("JWKS has no usable signing key", "url", j.url, "keys", set.Len())
	}
	return out, nil
}
