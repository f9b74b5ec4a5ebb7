package httpapi

import (
	"context"
	"math"
	"net/http"
	"strconv"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
)

// session returns the session named by the {id} path value, if the caller's tenant has it
// (agate.ESessionNotFound otherwise, also for another tenant's) and the caller has
// relation to it (relViewer or relWriter; agate.EForbidden otherwise).
func (s *Server) session(r *http.Request, relation string) (agate.Session, error) {
	id, err := parseSessionID(r.PathValue("id"))
	if err != nil {
		return agate.Session{}, err
	}
	p, _ := agate.PrincipalFrom(r.Context())
	sess, err := s.store.Session(r.Context(), p.Tenant, id)
	if err != nil {
		return agate.Session{}, err
	}
	if err := s.permit(r, sess, relation); err != nil {
		return agate.Session{}, err
	}
	return sess, nil
}

// queryInt reads an integer query parameter within [min, max], def when absent.
func queryInt(r *http.Request, name string, def, min, max int64) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < min || n > max {
		return 0, agate.Errorf(agate.EInvalidCursor, "Query parameter %s must be an integer from %d to %d.", name, min, max)
	}
	return n, nil
}

type sessionsPage struct {
	Sessions  []agate.Session `json:"sessions"`
	NextAfter string          `json:"next_after,omitempty"` // pass as ?after= for the next page
}

// handleListSessions lists the tenant's sessions, most recently active first.
func (s *Server) handleListSessions() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit, err := queryInt(r, "limit", 50, 1, 500)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		after := uuid.Nil
		if a := r.URL.Query().Get("after"); a != "" {
			if after, err = parseSessionID(a); err != nil {
				s.fail(w, r, agate.Errorf(agate.EInvalidCursor, "Query parameter after must be a session id."))
				return
			}
		}
		p, _ := agate.PrincipalFrom(r.Context())
		list, err := s.store.Sessions(r.Context(), p.Tenant, after, int(limit))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		page := sessionsPage{Sessions: []agate.Session{}}
		for _, sess := range list {
			// Only those the caller may read: a page may hold fewer than limit, and
			// next_after still pages through the tenant's sessions.
			switch err := s.permit(r, sess, relViewer); agate.ErrorCode(err) {
			case "":
				page.Sessions = append(page.Sessions, sess)
			case agate.EForbidden:
			default:
				s.fail(w, r, err)
				return
			}
		}
		if len(list) == int(limit) {
			page.NextAfter = list[len(list)-1].ID.String()
		}
		writeJSON(w, http.StatusOK, page)
	})
}

type eventsPage struct {
	SessionID uuid.UUID     `json:"session_id"`
	Events    []agate.Event `json:"events"`
	NextAfter int64         `json:"next_after"` // pass as ?after= for the next page
	HasMore   bool          `json:"has_more"`
}

// handleListEvents pages through a session's stored events by seq.
func (s *Server) handleListEvents() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sess, err := s.session(r, relViewer)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		after, err := queryInt(r, "after", 0, 0, math.MaxInt64)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		limit, err := queryInt(r, "limit", 100, 1, 1000)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		evs, err := s.store.Events(r.Context(), sess.ID, after, int(limit))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		page := eventsPage{SessionID: sess.ID, Events: evs, NextAfter: after}
		if page.Events == nil {
			page.Events = []agate.Event{}
		}
		if len(evs) > 0 {
			page.NextAfter = evs[len(evs)-1].Seq
		}
		page.HasMore = page.NextAfter < sess.LastSeq
		writeJSON(w, http.StatusOK, page)
	})
}

type historyBody struct {
	Session  agate.Session `json:"session"`
	Messages []agate.Event `json:"messages"`
}

// handleHistory returns the conversation: user messages and successful replies, oldest first.
func (s *Server) handleHistory() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sess, err := s.session(r, relViewer)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		limit, err := queryInt(r, "limit", 200, 1, 1000)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		msgs, err := s.store.Messages(r.Context(), sess.ID, math.MaxInt64, int(limit))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if msgs == nil {
			msgs = []agate.Event{}
		}
		writeJSON(w, http.StatusOK, historyBody{Session: sess, Messages: msgs})
	})
}

// handleDeleteSession deletes the session with its events, stops its turns and ends its
// open streams.
func (s *Server) handleDeleteSession() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sess, err := s.session(r, relWriter)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		id, p := sess.ID, principal(r)
		if err := s.store.DeleteSession(r.Context(), p.Tenant, id); err != nil {
			s.fail(w, r, err)
			return
		}
		s.runner.Forget(id)
		s.hub.Drop(id) // open streams end; WebSockets close with 4004
		if s.authzOn() {
			// Its owner, tenant and viewers go with it: should the id be used again, they
			// must not reach the new session.
			if err := s.authz.Forget(context.WithoutCancel(r.Context()), sessionRef(id)); err != nil {
				s.logError(r, err)
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
