package httpapi

import (
	"net/http"
	"regexp"
	"slices"
	"time"

	"github.com/agate-gw/agate"
)

type keyRequest struct {
	Label  string   `json:"label"`
	Scopes []string `json:"scopes"`
}

type createdKey struct {
	Token string       `json:"token"` // shown once
	Key   agate.APIKey `json:"key"`
}

type keysPage struct {
	Keys []agate.APIKey `json:"keys"`
}

var scopeName = regexp.MustCompile(`^[a-z][a-z0-9_.:-]{0,63}$`)

// handleCreateKey makes an API key of the caller's tenant with at most the caller's own
// scopes, and answers its token, which is not stored and never shown again.
func (s *Server) handleCreateKey() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.admin(r, "keys"); err != nil {
			s.fail(w, r, err)
			return
		}
		var b keyRequest
		if err := s.readJSON(w, r, &b); err != nil {
			s.fail(w, r, err)
			return
		}
		p := principal(r)
		switch {
		case s.newKey == nil:
			s.fail(w, r, agate.Errorf(agate.EForbidden, "API keys are not available on this gateway."))
			return
		case len(b.Label) > 200 || !printableASCII(b.Label) && b.Label != "":
			s.fail(w, r, agate.Errorf(agate.EInvalid, "label must be at most 200 printable ASCII characters."))
			return
		case len(b.Scopes) > 32:
			s.fail(w, r, agate.Errorf(agate.EInvalid, "A key has at most 32 scopes."))
			return
		}
		for _, sc := range b.Scopes {
			if !scopeName.MatchString(sc) {
				s.fail(w, r, agate.Errorf(agate.EInvalid, "Scope %q is not a valid scope name.", truncate(sc, 64)))
				return
			}
			if !p.HasScope(sc) {
				s.fail(w, r, agate.Errorf(agate.EForbidden, "A key cannot have scope %q, which you do not have.", sc))
				return
			}
		}
		scopes := slices.Compact(slices.Sorted(slices.Values(b.Scopes)))
		if scopes == nil {
			scopes = []string{}
		}
		token, key, err := s.newKey(p.Tenant, b.Label, scopes, p.Subject, time.Now().UTC())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if err := s.store.CreateAPIKey(r.Context(), key); err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusCreated, createdKey{Token: token, Key: key})
	})
}

// handleListKeys lists the tenant's API keys, revoked ones included; never their tokens.
func (s *Server) handleListKeys() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.admin(r, "keys"); err != nil {
			s.fail(w, r, err)
			return
		}
		keys, err := s.store.APIKeys(r.Context(), principal(r).Tenant)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if keys == nil {
			keys = []agate.APIKey{}
		}
		writeJSON(w, http.StatusOK, keysPage{Keys: keys})
	})
}

// handleRevokeKey revokes one of the tenant's keys; it stops working at once, on every
// replica (keys are looked up on each request).
func (s *Server) handleRevokeKey() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.admin(r, "keys"); err != nil {
			s.fail(w, r, err)
			return
		}
		key, err := s.store.RevokeAPIKey(r.Context(), principal(r).Tenant, r.PathValue("id"), time.Now().UTC())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, key)
	})
}
