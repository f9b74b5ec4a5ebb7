package opa_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/opa"
	"github.com/google/go-cmp/cmp"
)

// TestRemoteUndefinedDecision: an OPA server without the agate package answers {} (no
// "result"), which is an error and not an allow.
func TestRemoteUndefinedDecision(t *testing.T) {
	r, err := opa.NewRemote(startOPA(t, t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Decide(t.Context(), send(alice, "acme", 0, 0))
	if code := agate.ErrorCode(err); code != agate.EInternal {
		t.Errorf("Decide: error %v (code %q), want code %q", err, code, agate.EInternal)
	}
	if got.Allow {
		t.Error("Decide allowed")
	}
}

// TestRemoteSendsOPAsDataAPIRequest checks the request against OPA's REST data API: the
// method, the path (under the URL's prefix), the headers and {"input": …} with the JSON
// form of agate.PolicyInput. The real server's reading of it is TestDecisions/remote.
func TestRemoteSendsOPAsDataAPIRequest(t *testing.T) {
	var got struct {
		method, path, contentType string
		body                      map[string]any
	}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.method, got.path, got.contentType = r.Method, r.URL.Path, r.Header.Get("Content-Type")
		if err := json.NewDecoder(r.Body).Decode(&got.body); err != nil {
			t.Error(err)
		}
		io.WriteString(w, `{"result": {"allow": true, "reason": "ok"}, "decision_id": "d-1"}`)
	}))
	defer ts.Close()
	r, err := opa.NewRemote(ts.URL+"/opa/", ts.Client())
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.Decide(t.Context(), toolExec(ciKey, "shell", "high"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(allow("ok"), d); diff != "" {
		t.Errorf("decision (-want +got):\n%s", diff)
	}
	if got.method != http.MethodPost || got.path != "/opa/v1/data/agate/decision" || got.contentType != "application/json" {
		t.Errorf("request %s %s (Content-Type %q), want POST /opa/v1/data/agate/decision (application/json)",
			got.method, got.path, got.contentType)
	}
	want := map[string]any{"input": map[string]any{
		"principal": map[string]any{"tenant": "acme", "subject": "key:ci", "via": "api_key", "key_id": "k_7Hq", "scopes": []any{"tools:high"}},
		"tenant":    "acme",
		"action":    "tool.execute",
		"resource":  map[string]any{"type": "tool", "name": "shell"},
		"context":   map[string]any{"tool": "shell", "tool_risk": "high", "tools_deny": nil},
		"usage":     nil,
	}}
	if diff := cmp.Diff(want, got.body); diff != "" {
		t.Errorf("request body (-want +got):\n%s", diff)
	}
}

// TestRemoteFailsClosed: every way the exchange can fail is an error with the code the
// Decider contract gives, and the zero decision. The answers imitate OPA's wire format
// (its {"code", "message"} error bodies); they are stubs, the real server is in
// TestDecisions.
func TestRemoteFailsClosed(t *testing.T) {
	reply := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			io.WriteString(w, body)
		}
	}
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    agate.Code
	}{
		{"eval error", reply(500, `{"code": "internal_error", "message": "eval_conflict_error: complete rules must not produce multiple outputs"}`), agate.EUnavailable},
		{"proxy unavailable", reply(503, `upstream connect error`), agate.EUnavailable},
		{"bad request", reply(400, `{"code": "invalid_parameter", "message": "error(s) occurred while parsing input"}`), agate.EInternal},
		{"unauthorized", reply(401, `{"code": "unauthorized", "message": "missing required token"}`), agate.EInternal},
		{"not found", reply(404, `404 page not found`), agate.EInternal},
		{"undefined", reply(200, `{}`), agate.EInternal},
		{"null result", reply(200, `{"result": null}`), agate.EInternal},
		{"allow not a boolean", reply(200, `{"result": {"allow": "true"}}`), agate.EInternal},
		{"reason not a string", reply(200, `{"result": {"allow": true, "reason": ["ok"]}}`), agate.EInternal},
		{"result not an object", reply(200, `{"result": true}`), agate.EInternal},
		{"not JSON", reply(200, `<html>`), agate.EInternal},
		{"cut off", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, `{"result": {"allow": tr`)
		}, agate.EUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := httptest.NewServer(tc.handler)
			defer ts.Close()
			r, err := opa.NewRemote(ts.URL, ts.Client())
			if err != nil {
				t.Fatal(err)
			}
			wantFailure(t, r, t.Context(), tc.want)
		})
	}

	t.Run("unreachable", func(t *testing.T) {
		ts := httptest.NewServer(http.NotFoundHandler())
		url := ts.URL
		ts.Close()
		r, err := opa.NewRemote(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		wantFailure(t, r, t.Context(), agate.EUnavailable)
	})

	t.Run("slow", func(t *testing.T) {
		ts := hanging(t)
		client := ts.Client()
		client.Timeout = 50 * time.Millisecond
		r, err := opa.NewRemote(ts.URL, client)
		if err != nil {
			t.Fatal(err)
		}
		wantFailure(t, r, t.Context(), agate.EUnavailable)
	})

	t.Run("caller gone", func(t *testing.T) {
		ts := hanging(t)
		r, err := opa.NewRemote(ts.URL, ts.Client())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		_, err = r.Decide(ctx, send(alice, "acme", 0, 0))
		if !errors.Is(err, context.DeadlineExceeded) || agate.ErrorCode(err) == agate.EUnavailable {
			t.Errorf("Decide after the caller's deadline: %v (code %q), want context.DeadlineExceeded without a code",
				err, agate.ErrorCode(err))
		}
	})
}

// hanging is a server that never answers, until the test ends.
func hanging(t *testing.T) *httptest.Server {
	release := make(chan struct{})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // else the server does not notice the client leaving
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(ts.Close)
	t.Cleanup(func() { close(release) }) // runs first
	return ts
}

func wantFailure(t *testing.T, d opa.Decider, ctx context.Context, want agate.Code) {
	t.Helper()
	got, err := d.Decide(ctx, send(alice, "acme", 0, 0))
	if code := agate.ErrorCode(err); code != want {
		t.Errorf("Decide: error %v (code %q), want code %q", err, code, want)
	}
	if got != (agate.PolicyDecision{}) {
		t.Errorf("Decide with an error returned %+v, want the zero decision", got)
	}
}

func TestNewRemoteRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"", "opa:8181", "localhost:8181", "ftp://opa", "http://", "http://opa:8181/?x=1", "http://opa:8181/#f", "http://[::1"} {
		if _, err := opa.NewRemote(u, nil); err == nil {
			t.Errorf("NewRemote(%q) succeeded, want an error", u)
		}
	}
	for _, u := range []string{"http://opa:8181", "https://opa.internal/", "http://127.0.0.1:8181/prefix"} {
		if _, err := opa.NewRemote(u, nil); err != nil {
			t.Errorf("NewRemote(%q): %v", u, err)
		}
	}
}
