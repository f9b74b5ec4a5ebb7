package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

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
		{"NUL in the message", "POST", "/v1/session/message", `{"message":"a\u0000b"}`, json, 400, agate.EInvalid},
		{"NUL in metadata", "POST", "/v1/session/message", `{"message":"hi","metadata":{"k":["\u0000"]}}`, json, 400, agate.EInvalid},
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
			if strings.Contains(body.Detail, "httpapi") || strings.Contains(body.Detail, "Go value") {
				t.Fatalf("detail leaks internals: %q", body.Detail)
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
	g := start(t, withUpstream(newUpstream(t), nil))
	a := g.send(t, "", "hi")
	for _, id := range []string{"x", "-1", "3.x", "3.-2"} {
		res := do(t, "GET", g.URL+"/v1/session/"+a.SessionID+"/events", "", map[string]string{"Last-Event-ID": id})
		if res.status != 400 || !strings.Contains(string(res.body), `"invalid_cursor"`) {
			t.Errorf("Last-Event-ID %q: %d %s", id, res.status, res.body)
		}
	}
}

func TestBadInputIntoAnExistingSessionWritesNothing(t *testing.T) {
	g := start(t, withUpstream(newUpstream(t), map[string]string{"AGATE_MAX_MESSAGE_BYTES": "1024"}))
	a := g.send(t, "", "the only message")
	var before struct {
		Events []agate.Event `json:"events"`
	}
	for len(before.Events) < 4 || !agate.Terminal(before.Events[len(before.Events)-1].Type) { // the demo turn ends
		do(t, "GET", g.URL+"/v1/sessions/"+a.SessionID+"/events", "", nil).json(t, &before)
	}
	for _, body := range []string{
		`{"session_id":"` + a.SessionID + `","message":""}`,
		`{"session_id":"` + a.SessionID + `","message":"` + strings.Repeat("x", 2000) + `"}`,
		`{"session_id":"` + a.SessionID + `","message":"hi","extra":1}`,
		`{"session_id":"` + a.SessionID + `","message":"hi\u0000"}`,
		`{"session_id":"` + a.SessionID + `","message":"hi"`,
	} {
		if res := do(t, "POST", g.URL+"/v1/session/message", body, nil); res.status < 400 || res.status >= 500 {
			t.Fatalf("%.60s… answered %d", body, res.status)
		}
	}
	var after struct {
		Events []agate.Event `json:"events"`
	}
	do(t, "GET", g.URL+"/v1/sessions/"+a.SessionID+"/events", "", nil).json(t, &after)
	if len(after.Events) != len(before.Events) {
		t.Fatalf("bad requests into the session changed its events from %d to %d", len(before.Events), len(after.Events))
	}
}

func TestIdempotentRetryMayReserializeTheSameJSON(t *testing.T) {
	g := start(t, withUpstream(newUpstream(t), nil))
	key := map[string]string{"Idempotency-Key": "k-reserialized"}
	first := do(t, "POST", g.URL+"/v1/session/message", `{"message":"hi","metadata":{"a":1,"b":2}}`, key)
	again := do(t, "POST", g.URL+"/v1/session/message", `{ "metadata": {"b":2, "a":1}, "message": "hi" }`, key)
	if first.status != 200 || again.status != 200 || string(first.body) != string(again.body) {
		t.Fatalf("same request, other spelling: %d %s then %d %s", first.status, first.body, again.status, again.body)
	}
}

func TestWebSocketBadFramesAndHandshakes(t *testing.T) {
	g := start(t, withUpstream(newUpstream(t), map[string]string{"AGATE_MAX_BODY_BYTES": "4096", "AGATE_MAX_MESSAGE_BYTES": "1024"}))
	a := g.send(t, "", "hi")
	wsURL := "ws" + strings.TrimPrefix(g.URL, "http") + "/v1/session/" + a.SessionID + "/stream"
	for _, tc := range []struct {
		name  string
		typ   websocket.MessageType
		frame string
		want  websocket.StatusCode
	}{
		{"malformed JSON", websocket.MessageText, `{"type":`, 4000},
		{"binary frame", websocket.MessageBinary, `{"type":"ping"}`, 4000},
		{"unknown field with a very long name", websocket.MessageText, `{"type":"ping","` + strings.Repeat("f", 300) + `":1}`, 4000},
		{"resume without a position", websocket.MessageText, `{"type":"resume"}`, 4000},
		{"frame over the size limit", websocket.MessageText, `{"type":"message","message":"` + strings.Repeat("x", 5000) + `"}`, websocket.StatusMessageTooBig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, _, err := websocket.Dial(ctx, wsURL, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.CloseNow()
			conn.SetReadLimit(1 << 20)
			if err := conn.Write(ctx, tc.typ, []byte(tc.frame)); err != nil {
				t.Fatal(err)
			}
			for err == nil {
				_, _, err = conn.Read(ctx)
			}
			if got := websocket.CloseStatus(err); got != tc.want {
				t.Fatalf("closed with %v (%v), want %d", got, err, tc.want)
			}
		})
	}

	for _, tc := range []struct {
		name   string
		header map[string]string
		status int
		code   agate.Code
	}{
		{"no upgrade", map[string]string{}, 426, agate.EUpgradeRequired},
		{"no key", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}, 400, agate.EInvalid},
		{"foreign origin", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
			"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": "https://evil.example"}, 403, agate.EForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := do(t, "GET", g.URL+"/v1/session/"+a.SessionID+"/stream", "", tc.header)
			if res.status != tc.status || !strings.Contains(string(res.body), `"code":"`+string(tc.code)+`"`) {
				t.Fatalf("got %d %s, want %d %s as JSON", res.status, res.body, tc.status, tc.code)
			}
		})
	}
}
