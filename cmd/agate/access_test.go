package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

const testJWTSecret = "an HMAC secret of the tests, long enough: 0123456789abcdef"

// token returns a bearer header for subject of tenant with scopes ("" subject: none).
func token(t *testing.T, tenant, subject string, scopes ...string) map[string]string {
	t.Helper()
	if subject == "" {
		return nil
	}
	tok, err := jwt.NewBuilder().Subject(subject).Claim("tenant", tenant).
		Claim("scope", strings.Join(scopes, " ")).Expiration(time.Now().Add(time.Hour)).Build()
	if err != nil {
		t.Fatal(err)
	}
	b, err := jwt.Sign(tok, jwt.WithKey(jwa.HS256(), []byte(testJWTSecret)))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"Authorization": "Bearer " + string(b)}
}

// sseStatus opens the session's event stream and returns the status it answers with.
func sseStatus(t *testing.T, url string, header map[string]string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// wsOutcome dials the session's WebSocket: "open" when it streams, the close code when it
// is closed at once, or the HTTP status of a refused handshake.
func wsOutcome(t *testing.T, url string, header map[string]string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{HTTPHeader: http.Header{}}
	for k, v := range header {
		if k == "Sec-WebSocket-Protocol" {
			for _, p := range strings.Split(v, ",") {
				opts.Subprotocols = append(opts.Subprotocols, strings.TrimSpace(p))
			}
			continue
		}
		opts.HTTPHeader.Set(k, v)
	}
	conn, res, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http"), opts)
	if err != nil {
		if res != nil {
			return fmt.Sprint(res.StatusCode)
		}
		t.Fatal(err)
	}
	defer conn.CloseNow()
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"type":"ping"}`)); err != nil {
		return fmt.Sprint(int(websocket.CloseStatus(err)))
	}
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			return fmt.Sprint(int(websocket.CloseStatus(err)))
		}
		if strings.Contains(string(data), `"pong"`) {
			return "open"
		}
	}
}

// TestEveryRouteAdmitsExactlyWhoItShould is the cross-tenant matrix: every route that
// reads or changes a session, for the owner, a viewer the owner shared it with, another
// user of the tenant, a tenant admin, a user of another tenant, and a caller without
// credentials, on a gateway that requires them.
func TestEveryRouteAdmitsExactlyWhoItShould(t *testing.T) {
	u := newUpstream(t)
	g := start(t, withUpstream(u, map[string]string{"GATEWAY_REQUIRE_AUTH": "true", "GATEWAY_JWT_SECRET": testJWTSecret}))
	who := map[string]map[string]string{
		"owner":        token(t, "acme", "alice"),
		"viewer":       token(t, "acme", "vic"),
		"other user":   token(t, "acme", "mel"),
		"tenant admin": token(t, "acme", "ann", "admin"),
		"other tenant": token(t, "globex", "alice"), // the same subject, in another tenant
		"anonymous":    nil,
	}
	order := []string{"owner", "viewer", "other user", "tenant admin", "other tenant", "anonymous"}
	newSession := func() string {
		res := do(t, "POST", g.URL+"/v1/session/message", `{"message":"hi"}`, who["owner"])
		if res.status != 200 {
			t.Fatalf("owner creates a session: %d %s", res.status, res.body)
		}
		var a accepted
		res.json(t, &a)
		if res := do(t, "PUT", g.URL+"/v1/sessions/"+a.SessionID+"/viewers/vic", "", who["owner"]); res.status != 204 {
			t.Fatalf("owner shares the session: %d %s", res.status, res.body)
		}
		return a.SessionID
	}
	s := newSession()

	type check struct {
		route string
		do    func(h map[string]string) string
		want  map[string]string // by principal
	}
	read := map[string]string{"owner": "200", "viewer": "200", "other user": "403", "tenant admin": "200", "other tenant": "404", "anonymous": "401"}
	write := map[string]string{"owner": "200", "viewer": "403", "other user": "403", "tenant admin": "200", "other tenant": "404", "anonymous": "401"}
	status := func(method, path, body string, extra map[string]string) func(h map[string]string) string {
		return func(h map[string]string) string {
			hh := map[string]string{}
			for k, v := range h {
				hh[k] = v
			}
			for k, v := range extra {
				hh[k] = v
			}
			return fmt.Sprint(do(t, method, g.URL+path, body, hh).status)
		}
	}
	checks := []check{
		{"GET /v1/sessions/{id}/events", status("GET", "/v1/sessions/"+s+"/events", "", nil), read},
		{"GET /v1/sessions/{id}/history", status("GET", "/v1/sessions/"+s+"/history", "", nil), read},
		{"GET /v1/session/{id}/events (SSE)", func(h map[string]string) string {
			return fmt.Sprint(sseStatus(t, g.URL+"/v1/session/"+s+"/events", h))
		}, read},
		{"GET /v1/session/{id}/stream (WebSocket)", func(h map[string]string) string {
			return wsOutcome(t, g.URL+"/v1/session/"+s+"/stream", h)
		}, map[string]string{"owner": "open", "viewer": "open", "other user": "4003", "tenant admin": "open", "other tenant": "4004", "anonymous": "401"}},
		{"GET /v1/sessions (lists it)", func(h map[string]string) string {
			res := do(t, "GET", g.URL+"/v1/sessions", "", h)
			if res.status != 200 {
				return fmt.Sprint(res.status)
			}
			return fmt.Sprint(strings.Contains(string(res.body), s))
		}, map[string]string{"owner": "true", "viewer": "true", "other user": "false", "tenant admin": "true", "other tenant": "false", "anonymous": "401"}},
		{"POST /v1/session/message", status("POST", "/v1/session/message", `{"session_id":"`+s+`","message":"more"}`, nil), write},
		{"POST /v1/chat/completions with X-Session-Id", status("POST", "/v1/chat/completions",
			`{"model":"default","messages":[{"role":"user","content":"hi"}]}`, map[string]string{"X-Session-Id": s}), write},
		{"PUT /v1/sessions/{id}/viewers/{subject}", status("PUT", "/v1/sessions/"+s+"/viewers/zed", "", nil),
			map[string]string{"owner": "204", "viewer": "403", "other user": "403", "tenant admin": "204", "other tenant": "404", "anonymous": "401"}},
		{"DELETE /v1/sessions/{id}", func(h map[string]string) string {
			return fmt.Sprint(do(t, "DELETE", g.URL+"/v1/sessions/"+newSession(), "", h).status)
		}, map[string]string{"owner": "204", "viewer": "403", "other user": "403", "tenant admin": "204", "other tenant": "404", "anonymous": "401"}},
	}
	for _, c := range checks {
		for _, p := range order {
			if got := c.do(who[p]); got != c.want[p] {
				t.Errorf("%s as %s: %s, want %s", c.route, p, got, c.want[p])
			}
		}
	}

	// A user's own sessions are theirs whatever the tenant: alice of globex has none of
	// acme's, and her own listing is her own.
	res := do(t, "GET", g.URL+"/v1/sessions", "", who["other tenant"])
	var page struct {
		Sessions []json.RawMessage `json:"sessions"`
	}
	res.json(t, &page)
	if len(page.Sessions) != 0 {
		t.Errorf("alice of globex lists %d sessions, want none", len(page.Sessions))
	}
}

// TestAPIKeyLifecycleAcrossReplicas: an admin creates a key on one replica, it works on
// another, and once revoked on the first it is refused on the second at the next request.
// Browsers' credentials work too: a WebSocket subprotocol and the access_token query.
func TestAPIKeyLifecycleAcrossReplicas(t *testing.T) {
	dsn := freshPostgres(t)
	u := newUpstream(t)
	env := withUpstream(u, map[string]string{"POSTGRES_DSN": dsn, "GATEWAY_REQUIRE_AUTH": "true", "GATEWAY_JWT_SECRET": testJWTSecret})
	a, b := start(t, env), start(t, env)
	admin := token(t, "acme", "ann", "admin")

	res := do(t, "POST", a.URL+"/v1/keys", `{"label":"ci bot"}`, admin)
	if res.status != 201 {
		t.Fatalf("create key: %d %s", res.status, res.body)
	}
	var created struct {
		Token string `json:"token"`
		Key   struct {
			ID     string   `json:"id"`
			Tenant string   `json:"tenant"`
			Scopes []string `json:"scopes"`
		} `json:"key"`
	}
	res.json(t, &created)
	if !strings.HasPrefix(created.Token, "sk_"+created.Key.ID+"_") || created.Key.Tenant != "acme" || created.Key.Scopes == nil {
		t.Fatalf("created key = %+v", created)
	}
	if res := do(t, "POST", a.URL+"/v1/keys", `{"scopes":["billing"]}`, admin); res.status != 403 {
		t.Errorf("a key with a scope its creator lacks: %d %s, want 403", res.status, res.body)
	}
	if res := do(t, "GET", a.URL+"/v1/keys", "", admin); res.status != 200 || strings.Contains(string(res.body), created.Token) {
		t.Errorf("list keys: %d, token shown: %v", res.status, strings.Contains(string(res.body), created.Token))
	}

	key := map[string]string{"X-API-Key": created.Token}
	res = do(t, "POST", b.URL+"/v1/session/message", `{"message":"from the bot"}`, key)
	if res.status != 200 {
		t.Fatalf("the key on the other replica: %d %s", res.status, res.body)
	}
	var acc accepted
	res.json(t, &acc)
	bearer := map[string]string{"Authorization": "Bearer " + created.Token}
	if res := do(t, "GET", b.URL+"/v1/sessions/"+acc.SessionID+"/history", "", bearer); res.status != 200 {
		t.Errorf("the key as a bearer token: %d %s", res.status, res.body)
	}
	if got := sseStatus(t, b.URL+"/v1/session/"+acc.SessionID+"/events?access_token="+created.Token, nil); got != 200 {
		t.Errorf("SSE with access_token: %d, want 200", got)
	}
	if got := wsOutcome(t, b.URL+"/v1/session/"+acc.SessionID+"/stream",
		map[string]string{"Sec-WebSocket-Protocol": "agate.v1, bearer." + created.Token}); got != "open" {
		t.Errorf("WebSocket with the bearer subprotocol: %s, want open", got)
	}
	if res := do(t, "GET", b.URL+"/v1/keys", "", key); res.status != 403 {
		t.Errorf("a key without the admin scope lists keys: %d, want 403", res.status)
	}

	// A WebSocket opened with the key before it is revoked.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(b.URL, "http")+"/v1/session/"+acc.SessionID+"/stream",
		&websocket.DialOptions{HTTPHeader: http.Header{"X-Api-Key": {created.Token}}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()

	if res := do(t, "DELETE", a.URL+"/v1/keys/"+created.Key.ID, "", admin); res.status != 200 {
		t.Fatalf("revoke: %d %s", res.status, res.body)
	}
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"type":"message","message":"after revocation"}`)); err != nil {
		t.Fatal(err)
	}
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			if got := websocket.CloseStatus(err); got != 4001 {
				t.Errorf("the open WebSocket after revocation: %v, want close 4001", err)
			}
			break
		}
		if strings.Contains(string(data), `"ack"`) {
			t.Fatalf("a message over the WebSocket was accepted after the key was revoked: %s", data)
		}
	}
	res = do(t, "POST", b.URL+"/v1/session/message", `{"message":"after revocation"}`, key)
	if res.status != 401 || !strings.Contains(string(res.body), `"unauthenticated"`) {
		t.Fatalf("the revoked key on the other replica: %d %s, want 401", res.status, res.body)
	}
	if res := do(t, "DELETE", a.URL+"/v1/keys/"+created.Key.ID, "", token(t, "globex", "gus", "admin")); res.status != 404 {
		t.Errorf("another tenant's admin revokes the key: %d, want 404", res.status)
	}
}

// TestAccessEdgeCases: a replayed idempotency key, a deleted session's id used again, and
// the routes that show every tenant's state.
func TestAccessEdgeCases(t *testing.T) {
	g := start(t, withUpstream(newUpstream(t), map[string]string{"GATEWAY_REQUIRE_AUTH": "true", "GATEWAY_JWT_SECRET": testJWTSecret}))
	alice, mel, vic := token(t, "acme", "alice"), token(t, "acme", "mel"), token(t, "acme", "vic")
	with := func(h map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for a, b := range h {
			out[a] = b
		}
		return out
	}

	// Idempotency keys are the tenant's, sessions are not: mel replaying alice's key does
	// not get her session.
	body := `{"message":"private"}`
	if res := do(t, "POST", g.URL+"/v1/session/message", body, with(alice, "Idempotency-Key", "k-1")); res.status != 200 {
		t.Fatalf("alice: %d %s", res.status, res.body)
	}
	if res := do(t, "POST", g.URL+"/v1/session/message", body, with(mel, "Idempotency-Key", "k-1")); res.status != 403 {
		t.Errorf("mel replays alice's idempotency key: %d %s, want 403", res.status, res.body)
	}

	// A deleted session's relationships go with it.
	id := uuid.NewString()
	if res := do(t, "POST", g.URL+"/v1/session/message", `{"session_id":"`+id+`","message":"first life"}`, alice); res.status != 200 {
		t.Fatalf("alice creates %s: %d %s", id, res.status, res.body)
	}
	if res := do(t, "PUT", g.URL+"/v1/sessions/"+id+"/viewers/vic", "", alice); res.status != 204 {
		t.Fatalf("share: %d", res.status)
	}
	if res := do(t, "DELETE", g.URL+"/v1/sessions/"+id, "", alice); res.status != 204 {
		t.Fatalf("delete: %d", res.status)
	}
	if res := do(t, "POST", g.URL+"/v1/session/message", `{"session_id":"`+id+`","message":"second life"}`, mel); res.status != 200 {
		t.Fatalf("mel creates %s again: %d %s", id, res.status, res.body)
	}
	for name, h := range map[string]map[string]string{"alice (owner before)": alice, "vic (viewer before)": vic} {
		if res := do(t, "GET", g.URL+"/v1/sessions/"+id+"/history", "", h); res.status != 403 {
			t.Errorf("%s reads the new session with the old id: %d, want 403", name, res.status)
		}
	}
	if res := do(t, "GET", g.URL+"/v1/sessions/"+id+"/history", "", mel); res.status != 200 {
		t.Errorf("mel reads her session: %d", res.status)
	}

	// Dead letters and breakers show every tenant's state: operators only.
	for path, want := range map[string]int{"/v1/admin/dlq": 403, "/v1/admin/breakers": 403} {
		if res := do(t, "GET", g.URL+path, "", token(t, "acme", "ann", "admin")); res.status != want {
			t.Errorf("a tenant admin GET %s: %d, want %d", path, res.status, want)
		}
		if res := do(t, "GET", g.URL+path, "", token(t, "ops", "olga", "operator")); res.status != 200 {
			t.Errorf("an operator GET %s: %d %s, want 200", path, res.status, res.body)
		}
	}
}
