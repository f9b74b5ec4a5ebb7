package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
)

// readJSON reads a JSON request body into v: application/json only, at most
// Config.MaxBodyBytes, valid UTF-8, one object with no unknown fields. It returns the raw
// body too, for fingerprinting.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, v any) ([]byte, error) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return nil, agate.Errorf(agate.EUnsupportedMedia, "Send the body as application/json.")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, agate.Errorf(agate.EBodyTooLarge, "The request body is over the %d-byte limit.", s.cfg.MaxBodyBytes)
		}
		return nil, agate.Wrap(agate.EInvalid, err, "The request body could not be read.")
	}
	return body, decodeJSON(body, v)
}

// decodeJSON decodes one JSON object from body into v, strictly.
func decodeJSON(body []byte, v any) error {
	if !utf8.Valid(body) {
		return agate.Errorf(agate.EInvalidUTF8, "The body is not valid UTF-8.")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return agate.Errorf(agate.EUnknownField, "Unknown field %s.", name)
		}
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return agate.Errorf(agate.EInvalidJSON, "Field %q must be %s.", typeErr.Field, typeErr.Type)
		}
		if errors.Is(err, io.EOF) {
			return agate.Errorf(agate.EInvalidJSON, "The body is empty; send a JSON object.")
		}
		return agate.Errorf(agate.EInvalidJSON, "The body is not valid JSON: %s.", strings.TrimPrefix(err.Error(), "json: "))
	}
	if dec.More() {
		return agate.Errorf(agate.EInvalidJSON, "The body has data after the JSON object.")
	}
	if _, err := dec.Token(); err != io.EOF {
		return agate.Errorf(agate.EInvalidJSON, "The body has data after the JSON object.")
	}
	return nil
}

// parseSessionID parses a session id in its canonical form only (36 characters), so that a
// typo is a 400 and never a different session.
func parseSessionID(s string) (uuid.UUID, error) {
	if len(s) != 36 {
		return uuid.Nil, agate.Errorf(agate.EInvalidSessionID, "Session id %q is not a UUID.", truncate(s, 64))
	}
	id, err := uuid.Parse(s)
	if err != nil || id == uuid.Nil {
		return uuid.Nil, agate.Errorf(agate.EInvalidSessionID, "Session id %q is not a UUID.", truncate(s, 64))
	}
	return id, nil
}

// truncate cuts s to at most n bytes on a rune boundary, for echoing input in messages.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
