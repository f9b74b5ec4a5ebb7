package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"os"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/agate-gw/agate"
	"github.com/google/uuid"
)

// readJSON reads a JSON request body into v: application/json only, at most
// Config.MaxBodyBytes, valid UTF-8, one object with no unknown fields.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := s.readBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		return err
	}
	return decodeJSON(body, v)
}

// readBody reads an application/json body of at most limit bytes of valid UTF-8.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return nil, agate.Errorf(agate.EUnsupportedMedia, "Send the body as application/json.")
	}
	// A client that trickles its body does not hold a handler for long.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.cfg.ReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, agate.Errorf(agate.EBodyTooLarge, "The request body is over the %d-byte limit.", limit)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, agate.Wrap(agate.ERequestTimeout, err, "The request body arrived too slowly.")
		}
		return nil, agate.Wrap(agate.EClientGone, err, "The request body could not be read.")
	}
	if !utf8.Valid(body) {
		return nil, agate.Errorf(agate.EInvalidUTF8, "The body is not valid UTF-8.")
	}
	return body, nil
}

// decodeJSON decodes one JSON object from body into v, strictly.
func decodeJSON(body []byte, v any) error {
	if !utf8.Valid(body) {
		return agate.Errorf(agate.EInvalidUTF8, "The text is not valid UTF-8.")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return agate.Errorf(agate.EUnknownField, "Unknown field %s.", truncate(name, 64))
		}
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			if typeErr.Field == "" {
				return agate.Errorf(agate.EInvalidJSON, "The body must be a JSON object.")
			}
			return agate.Errorf(agate.EInvalidJSON, "Field %q must be %s.", truncate(typeErr.Field, 64), jsonKind(typeErr.Type.Kind()))
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

// jsonKind names a Go kind as the JSON type that decodes into it.
func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Pointer, reflect.Interface:
		return "a JSON value"
	default:
		return "a number"
	}
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
