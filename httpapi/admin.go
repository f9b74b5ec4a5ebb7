package httpapi

import (
	"math"
	"net/http"
	"slices"
	"time"
	"unicode/utf8"

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

// admin admits a route of the tenant's administrators: the admin scope, then the
// policy's admin.<name>.
func (s *Server) admin(r *http.Request, name string) error {
	if err := requireScope(r, scopeAdmin); err != nil {
		return err
	}
	return s.decide(r, "admin."+name, map[string]any{"type": "route", "name": name}, nil)
}

// operator admits a route that shows every tenant's state: the operator scope (a tenant's
// admin scope is not enough), then the policy's admin.<name>.
func (s *Server) operator(r *http.Request, name string) error {
	if err := requireScope(r, agate.ScopeOperator); err != nil {
		return err
	}
	return s.decide(r, "admin."+name, map[string]any{"type": "route", "name": name}, nil)
}

// breakerLister is what a Model that routes through circuit breakers also does.
type breakerLister interface {
	Breakers() []router.BreakerStatus
}

// handleBreakers shows every circuit breaker's state (admin scope).
func (s *Server) handleBreakers() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.operator(r, "breakers"); err != nil {
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

// deadLetter is one agate.DeadLetter as the API shows it. Key and Payload are base64 (they
// need not be text); KeyText and PayloadText repeat them when they are valid UTF-8.
type deadLetter struct {
	ID          int64             `json:"id"`
	Topic       string            `json:"topic"`
	Partition   int32             `json:"partition"`
	Offset      int64             `json:"offset"`
	Key         []byte            `json:"key"`
	KeyText     *string           `json:"key_text,omitempty"`
	Payload     []byte            `json:"payload"`
	PayloadText *string           `json:"payload_text,omitempty"`
	Headers     map[string]string `json:"headers"`
	Error       string            `json:"error"`
	CreatedAt   time.Time         `json:"created_at"`
}

type deadLettersPage struct {
	DeadLetters []deadLetter `json:"dead_letters"`
	NextAfter   int64        `json:"next_after,omitempty"` // pass as ?after= for the next page
}

// text returns b as a string when it is valid UTF-8, else nil.
func text(b []byte) *string {
	if !utf8.Valid(b) {
		return nil
	}
	s := string(b)
	return &s
}

// validTopic reports whether t is a legal Kafka topic name.
func validTopic(t string) bool {
	if len(t) == 0 || len(t) > 249 {
		return false
	}
	for _, c := range []byte(t) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// handleDeadLetters lists the stored dead letters, oldest first, paged by id (admin scope).
func (s *Server) handleDeadLetters() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.operator(r, "dlq"); err != nil {
			s.fail(w, r, err)
			return
		}
		topic := r.URL.Query().Get("topic")
		if topic != "" && !validTopic(topic) {
			s.fail(w, r, agate.Errorf(agate.EInvalid, "Query parameter topic must be a Kafka topic name: 1 to 249 of a-z A-Z 0-9 . _ -."))
			return
		}
		after, err := queryInt(r, "after", 0, 0, math.MaxInt64)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		limit, err := queryInt(r, "limit", 50, 1, 500)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		list, err := s.store.DeadLetters(r.Context(), topic, after, int(limit))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		page := deadLettersPage{DeadLetters: make([]deadLetter, 0, len(list))}
		for _, d := range list {
			headers := d.Headers
			if headers == nil {
				headers = map[string]string{}
			}
			page.DeadLetters = append(page.DeadLetters, deadLetter{
				ID: d.ID, Topic: d.Topic, Partition: d.Partition, Offset: d.Offset,
				Key: nonNilBytes(d.Key), KeyText: text(d.Key), Payload: nonNilBytes(d.Payload), PayloadText: text(d.Payload),
				Headers: headers, Error: d.Error, CreatedAt: d.CreatedAt,
			})
		}
		if len(list) == int(limit) {
			page.NextAfter = list[len(list)-1].ID
		}
		writeJSON(w, http.StatusOK, page)
	})
}

// nonNilBytes returns b, or an empty slice for nil (which JSON would show as null).
func nonNilBytes(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
