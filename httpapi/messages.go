package httpapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
)

// messageBody is a user message, as POSTed or sent over the WebSocket.
type messageBody struct {
	SessionID   string         `json:"session_id,omitempty"`
	PersonaID   string         `json:"persona_id,omitempty"`
	Message     string         `json:"message"`
	Attachments []string       `json:"attachments,omitempty"`
	Metadata    map[string]any `json:"metadata,omitempty"`
}

// inbound validates b and returns it as an agate.Inbound for principal p.
func (s *Server) inbound(p agate.Principal, b messageBody) (agate.Inbound, error) {
	in := agate.Inbound{
		Tenant: p.Tenant, Subject: p.Subject, PersonaID: b.PersonaID,
		Message: b.Message, Attachments: b.Attachments, Metadata: b.Metadata,
	}
	if b.SessionID != "" {
		id, err := parseSessionID(b.SessionID)
		if err != nil {
			return in, err
		}
		in.SessionID = id
	}
	if strings.TrimSpace(b.Message) == "" {
		return in, agate.Errorf(agate.EEmptyMessage, "The message is empty.")
	}
	if len(b.Message) > s.cfg.MaxMessageBytes {
		return in, agate.Errorf(agate.EMessageTooLarge, "The message is %d bytes; the limit is %d.", len(b.Message), s.cfg.MaxMessageBytes)
	}
	if !utf8.ValidString(b.Message) {
		return in, agate.Errorf(agate.EInvalidUTF8, "The message is not valid UTF-8.")
	}
	if strings.ContainsRune(b.Message, 0) || strings.ContainsRune(b.PersonaID, 0) || hasNUL(b.Metadata) || hasNUL(b.Attachments) {
		return in, agate.Errorf(agate.EInvalid, "Text may not contain the NUL character (\\u0000).")
	}
	if len(b.PersonaID) > 128 {
		return in, agate.Errorf(agate.EInvalid, "persona_id is longer than 128 bytes.")
	}
	return in, nil
}

// hasNUL reports whether a decoded JSON value holds a NUL character in any string or key:
// stores such as Postgres cannot keep one.
func hasNUL(v any) bool {
	switch v := v.(type) {
	case string:
		return strings.ContainsRune(v, 0)
	case []string:
		return slices.ContainsFunc(v, func(s string) bool { return strings.ContainsRune(s, 0) })
	case []any:
		return slices.ContainsFunc(v, hasNUL)
	case map[string]any:
		for k, x := range v {
			if strings.ContainsRune(k, 0) || hasNUL(x) {
				return true
			}
		}
	}
	return false
}

type acceptedBody struct {
	SessionID uuid.UUID `json:"session_id"`
	EventID   uuid.UUID `json:"event_id"`
	Seq       int64     `json:"seq"`
}

// handleSendMessage accepts a user message: 200 {session_id, event_id} once it is stored.
// With an Idempotency-Key header a retry answers the first outcome and queues nothing.
func (s *Server) handleSendMessage() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		if len(key) > 255 || !printableASCII(key) {
			s.fail(w, r, agate.Errorf(agate.EInvalid, "Idempotency-Key must be at most 255 printable ASCII characters."))
			return
		}
		var b messageBody
		if err := s.readJSON(w, r, &b); err != nil {
			s.fail(w, r, err)
			return
		}
		p, _ := agate.PrincipalFrom(r.Context())
		in, err := s.inbound(p, b)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if key != "" {
			// The fingerprint is of the decoded request, so a retry that serializes the
			// same JSON differently (spacing, key order) is still the same request.
			canonical, _ := json.Marshal(b) // struct fields in order, map keys sorted
			sum := sha256.Sum256(canonical)
			in.IdempotencyKey, in.RequestHash = key, hex.EncodeToString(sum[:])
		}
		creates, err := s.admitMessage(r, in)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		acc, err := s.runner.Send(r.Context(), in)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if err := s.accepted(r, creates, acc); err != nil {
			s.fail(w, r, err)
			return
		}
		if acc.Duplicate {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		if ri, ok := r.Context().Value(infoKey{}).(*info); ok {
			ri.session = acc.Turn.SessionID.String() // for the request's log line
		}
		writeJSON(w, http.StatusOK, acceptedBody{SessionID: acc.Turn.SessionID, EventID: acc.Event.EventID, Seq: acc.Event.Seq})
	})
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
