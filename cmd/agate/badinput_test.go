package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/agate-gw/agate"
)

// Every bad request gets a precise status and code, a request id, and writes nothing.
func TestBadInputGetsAPreciseErrorAndWritesNothing(t *testing.T) {
	g := start(t, map[string]string{"AGATE_MAX_MESSAGE_BYTES": "1024", "AGATE_MAX_BODY_BYTES": "4096"})
	json := map[string]string{"Content-Type": "application/json"}
	tests := []struct {
		name, method, path, body string
		header                   map[string]string
		status                   int
		code                     agate.Code
	}{
		{"malformed JSON", "POST", "/v1/session/message", `{"message": "hi"`, json, 400, agate.EInvalidJSON},
		{"not an object", "POST", "/v1/session/message", `["hi"]`, json, 400, agate.EInvalidJSON},
		{"wrong field type", "POST", "/v1/session/message", `{"message": 42}`, json, 400, agate.EInvalidJSON},
		{"trailing data", "POST", "/v1/session/message", `{"message":"hi"} {"message":"again"}`, json, 400, agate.EInvalidJSON},
		{"empty body", "POST", "/v1/session/message", ``, json, 400, agate.EInvalidJSON},
		{"unknown field", "POST", "/v1/session/message", `{"message":"hi","mesage":"typo"}`, json, 400, agate.EUnknownField},
		{"empty message", "POST", "/v1/session/message", `{"message":""}`, json, 400, agate.EEmptyMessage},
		{"blank message", "POST", "/v1/session/message", `{"message":" \n\t "}`, json, 400, agate.EEmptyMessage},
		{"missing message", "POST", "/v1/session/message", `{}`, json, 400, agate.EEmptyMessage},
		{"message over the limit", "POST", "/v1/session/message", `{"message":"` + strings.Repeat("a", 1025) + `"}`, json, 413, agate.EMessageTooLarge},
		{"body over the limit", "POST", "/v1/session/message", `{"message":"hi","metadata":{"pad":"` + strings.Repeat("a", 5000) + `"}}`, json, 413, agate.EBodyTooLarge},
		{"invalid UTF-8", "POST", "/v1/session/message", "{\"message\":\"caf\xe9\"}", json, 400, agate.EInvalidUTF8},
		{"session id not a UUID", "POST", "/v1/session/message", `{"session_id":"abc","message":"hi"}`, json, 400, agate.EInvalidSessionID},
		{"session id in another form", "POST", "/v1/session/message", `{"session_id":"{6f1c8e9a-1b2c-4d3e-8f40-5a6b7c8d9e0f}","message":"hi"}`, json, 400, agate.EInvalidSessionID},
		{"wrong content type", "POST", "/v1/session/message", `{"message":"hi"}`, map[string]string{"Content-Type": "text/plain"}, 415, agate.EUnsupportedMedia},
		{"no content type", "POST", "/v1/session/message", `{"message":"hi"}`, map[string]string{"Content-Type": ""}, 415, agate.EUnsupportedMedia},
		{"bad idempotency key", "POST", "/v1/session/message", `{"message":"hi"}`, map[string]string{"Content-Type": "application/json", "Idempotency-Key": strings.Repeat("k", 256)}, 400, agate.EInvalid},
		{"SSE session not a UUID", "GET", "/v1/session/not-a-uuid/events", "", nil, 400, agate.EInvalidSessionID},
		{"SSE unknown session", "GET", "/v1/session/6f1c8e9a-1b2c-4d3e-8f40-5a6b7c8d9e0f/events", "", nil, 404, agate.ESessionNotFound},
		{"WS without upgrade", "GET", "/v1/session/6f1c8e9a-1b2c-4d3e-8f40-5a6b7c8d9e0f/stream", "", nil, 426, agate.EUpgradeRequired},
		{"events of unknown session", "GET", "/v1/sessions/6f1c8e9a-1b2c-4d3e-8f40-5a6b7c8d9e0f/events", "", nil, 404, agate.ESessionNotFound},
		{"history of bad id", "GET", "/v1/sessions/zzz/history", "", nil, 400, agate.EInvalidSessionID},
		{"delete unknown session", "DELETE", "/v1/sessions/6f1c8e9a-1b2c-4d3e-8f40-5a6b7c8d9e0f", "", nil, 404, agate.ESessionNotFound},
		{"bad limit", "GET", "/v1/sessions?limit=0", "", nil, 400, agate.EInvalidCursor},
		{"bad after", "GET", "/v1/sessions?after=nope", "", nil, 400, agate.EInvalidCursor},
		{"unknown route", "GET", "/v1/nothing-here", "", nil, 404, agate.ENotFound},
		{"wrong method", "PUT", "/v1/session/message", "", nil, 405, agate.EMethodNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := do(t, tc.method, g.URL+tc.path, tc.body, tc.header)
			var body struct {
				Detail    string     `json:"detail"`
				Code      agate.Code `json:"code"`
				RequestID string     `json:"request_id"`
			}
			res.json(t, &body)
			if res.status != tc.status || body.Code != tc.code {
				t.Fatalf("got %d %q, want %d %q (%s)", res.status, body.Code, tc.status, tc.code, body.Detail)
			}
			if body.Detail == "" || body.RequestID == "" || body.RequestID != res.header.Get("X-Request-ID") {
				t.Fatalf("error body %+v lacks detail or the request id %q", body, res.header.Get("X-Request-ID"))
			}
			if res.header.Get("Content-Type") != "application/json" {
				t.Fatalf("error Content-Type %q", res.header.Get("Content-Type"))
			}
		})
	}
	if res := do(t, "PUT", g.URL+"/v1/session/message", "", nil); res.header.Get("Allow") != http.MethodPost {
		t.Errorf("405 Allow = %q, want POST", res.header.Get("Allow"))
	}
	var list struct {
		Sessions []any `json:"sessions"`
	}
	do(t, "GET", g.URL+"/v1/sessions", "", nil).json(t, &list)
	if len(list.Sessions) != 0 {
		t.Fatalf("bad requests left %d sessions behind", len(list.Sessions))
	}
}

func TestSSEWithAMalformedLastEventIDIsA400(t *testing.T) {
	g := start(t, nil)
	a := g.send(t, "", "hi")
	for _, id := range []string{"x", "-1", "3.x", "3.-2"} {
		res := do(t, "GET", g.URL+"/v1/session/"+a.SessionID+"/events", "", map[string]string{"Last-Event-ID": id})
		if res.status != 400 || !strings.Contains(string(res.body), `"invalid_cursor"`) {
			t.Errorf("Last-Event-ID %q: %d %s", id, res.status, res.body)
		}
	}
}
