package httpapi

import (
	"net/http"
	"slices"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/router"
)

// scopeAdmin is the scope that operations routes require.
const scopeAdmin = "admin"

// requireScope refuses principals without scope.
func requireScope(r *http.Request, scope string) error {
	p, _ := agate.PrincipalFrom(r.Context())
	if !slices.Contains(p.Scopes, scope) {
		return agate.Errorf(agate.EForbidden, "This route needs the %q scope.", scope)
	}
	return nil
}

// breakerLister is what a Model that routes through circuit breakers also does.
type breakerLister interface {
	Breakers() []router.BreakerStatus
}

// handleBreakers shows every circuit breaker's state (admin scope).
func (s *Server) handleBreakers() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := requireScope(r, scopeAdmin); err != nil {
			s.fail(w, r, err)
			return
		}
		list := []router.BreakerStatus{}
		if b, ok := s.model.(breakerLister); ok {
			list = append(list, b.Breakers()...)
		}
		writeJSON(w, http.StatusOK, map[string]any{"breakers": list})
	})
}
