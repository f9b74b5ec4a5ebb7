package opa_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/opa"
	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/logging"
	"github.com/open-policy-agent/opa/v1/plugins"
	"github.com/open-policy-agent/opa/v1/server"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

var (
	_ opa.Decider = (*opa.Embedded)(nil)
	_ opa.Decider = (*opa.Remote)(nil)
	_ opa.Decider = (*opa.Measured)(nil)
)

// Realistic principals of tenant acme.
var (
	alice    = agate.Principal{Tenant: "acme", Subject: "alice", Via: agate.ViaJWT}
	aliceOps = agate.Principal{Tenant: "acme", Subject: "alice", Via: agate.ViaJWT, Scopes: []string{"admin"}}
	ciKey    = agate.Principal{Tenant: "acme", Subject: "key:ci", Via: agate.ViaAPIKey, KeyID: "k_7Hq", Scopes: []string{"tools:high"}}
	anon     = agate.Principal{Tenant: "public", Subject: "anonymous", Via: agate.ViaAnonymous}
)

func send(p agate.Principal, tenant string, spent, limit int64) agate.PolicyInput {
	return agate.PolicyInput{
		Principal: p, Tenant: tenant, Action: "conversation.send",
		Resource: map[string]any{"type": "session", "id": "0b7e3a52-9f0e-4c8e-8a57-3c1e1f0d2b11"},
		Context:  map[string]any{"model": "openai/gpt-4.1-mini"},
		Usage:    map[string]any{"tokens_spent": spent, "tokens_limit": limit},
	}
}

func modelUse(model string, allow, deny []string, spent, limit int64) agate.PolicyInput {
	routing := map[string]any{}
	if allow != nil {
		routing["allow"] = allow
	}
	if deny != nil {
		routing["deny"] = deny
	}
	return agate.PolicyInput{
		Principal: alice, Tenant: "acme", Action: "model.use",
		Resource: map[string]any{"type": "model", "name": model},
		Context:  map[string]any{"model": model, "routing": routing},
		Usage:    map[string]any{"tokens_spent": spent, "tokens_limit": limit},
	}
}

func toolExec(p agate.Principal, tool, risk string, deny ...string) agate.PolicyInput {
	ctx := map[string]any{"tool": tool, "tools_deny": deny}
	if risk != "" {
		ctx["tool_risk"] = risk
	}
	return agate.PolicyInput{
		Principal: p, Tenant: p.Tenant, Action: "tool.execute",
		Resource: map[string]any{"type": "tool", "name": tool}, Context: ctx,
	}
}

func action(p agate.Principal, name string) agate.PolicyInput {
	return agate.PolicyInput{Principal: p, Tenant: p.Tenant, Action: name, Resource: map[string]any{"type": "tenant", "id": p.Tenant}}
}

func allow(reason string) agate.PolicyDecision {
	return agate.PolicyDecision{Allow: true, Reason: reason}
}

func deny(reason string) agate.PolicyDecision {
	return agate.PolicyDecision{Allow: false, Reason: reason}
}

// decisionCases are the policy's rules as the gateway asks them, one allow and one deny at
// least per rule.
var decisionCases = []struct {
	name string
	in   agate.PolicyInput
	want agate.PolicyDecision
}{
	{"member sends in own tenant", send(alice, "acme", 1200, 100_000), allow("member of the tenant")},
	{"anonymous sends in public", send(anon, "public", 0, 0), allow("member of the tenant")},
	{"member sends to another tenant", send(alice, "globex", 0, 0), deny("cross-tenant")},
	{"send without a tenant", send(agate.Principal{Subject: "x"}, "", 0, 0), deny("cross-tenant")},
	{"send with budget spent", send(alice, "acme", 100_000, 100_000), deny("budget_exceeded")},
	{"send with no budget set", send(alice, "acme", 9_999_999, 0), allow("member of the tenant")},
	{"cross-tenant reported before budget", send(alice, "globex", 10, 1), deny("cross-tenant")},

	{"model with no routing rules", modelUse("openai/gpt-4.1", nil, nil, 0, 0),
		allow(`model "openai/gpt-4.1" is allowed: no routing.allow list`)},
	{"model in allow list", modelUse("openai/gpt-4.1-mini", []string{"anthropic/*", "openai/*"}, nil, 0, 0),
		allow(`model "openai/gpt-4.1-mini" is allowed by routing.allow pattern "openai/*"`)},
	{"model by prefix pattern", modelUse("gpt-4.1-nano", []string{"gpt-4.1*"}, []string{}, 0, 0),
		allow(`model "gpt-4.1-nano" is allowed by routing.allow pattern "gpt-4.1*"`)},
	{"model outside allow list", modelUse("anthropic/claude-sonnet-4", []string{"openai/*"}, nil, 0, 0),
		deny(`model "anthropic/claude-sonnet-4" matches no routing.allow pattern ["openai/*"]`)},
	{"model in deny list", modelUse("openai/o3-pro", nil, []string{"openai/o3*"}, 0, 0),
		deny(`model "openai/o3-pro" is denied by routing.deny pattern "openai/o3*"`)},
	{"deny wins over allow", modelUse("openai/o3-pro", []string{"openai/*"}, []string{"*-pro"}, 0, 0),
		deny(`model "openai/o3-pro" is denied by routing.deny pattern "*-pro"`)},
	{"model with budget spent", modelUse("openai/gpt-4.1", []string{"openai/*"}, nil, 50_001, 50_000), deny("budget_exceeded")},
	{"no model requested", modelUse("", nil, nil, 0, 0), deny("no model in the request")},

	{"low-risk tool", toolExec(alice, "web_search", "low", "shell"), allow(`tool "web_search" is allowed`)},
	{"tool without a risk", toolExec(alice, "calculator", ""), allow(`tool "calculator" is allowed`)},
	{"denied tool", toolExec(ciKey, "shell", "high", "shell", "fs_write"), deny(`tool "shell" is in tools_deny`)},
	{"high-risk tool without scope", toolExec(aliceOps, "shell", "high"), deny(`tool "shell" is high risk and needs scope "tools:high"`)},
	{"high-risk tool with scope", toolExec(ciKey, "shell", "high"), allow(`tool "shell" is allowed`)},
	{"no tool named", toolExec(alice, "", "low"), deny("no tool in the request")},

	{"settings by an admin", action(aliceOps, "settings.update"), allow(`scope "admin"`)},
	{"settings by a member", action(alice, "settings.update"), deny(`action "settings.update" needs scope "admin"`)},
	{"admin.keys by an admin", action(aliceOps, "admin.keys"), allow(`scope "admin"`)},
	{"admin.dlq by an admin", action(aliceOps, "admin.dlq"), allow(`scope "admin"`)},
	{"admin.breakers by a key without admin", action(ciKey, "admin.breakers"), deny(`action "admin.breakers" needs scope "admin"`)},
	{"admin.keys anonymously", action(anon, "admin.keys"), deny(`action "admin.keys" needs scope "admin"`)},

	{"unknown action", action(aliceOps, "session.delete"), deny(`unknown action "session.delete"`)},
	{"no action", action(aliceOps, ""), deny(`unknown action ""`)},
}

// TestDecisions asks each rule of policy/ through both deciders: Embedded, and Remote
// against OPA's own server (its REST API handler, in process).
func TestDecisions(t *testing.T) {
	embedded, err := opa.NewEmbedded(t.Context(), policyDir, discard())
	if err != nil {
		t.Fatal(err)
	}
	remote, err := opa.NewRemote(startOPA(t, policyDir), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct {
		name string
		opa.Decider
	}{{"embedded", embedded}, {"remote", remote}} {
		t.Run(d.name, func(t *testing.T) {
			for _, tc := range decisionCases {
				got, err := d.Decide(t.Context(), tc.in)
				if err != nil {
					t.Errorf("%s: %v", tc.name, err)
					continue
				}
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("%s (-want +got):\n%s", tc.name, diff)
				}
			}
		})
	}
}

// startOPA serves OPA's REST API (github.com/open-policy-agent/opa/v1/server, the handler
// `opa run --server` serves) on a local port, with the policies of dir uploaded through
// its policy API, and returns its URL.
func startOPA(t testing.TB, dir string) string {
	t.Helper()
	ctx := context.Background()
	store := inmem.New()
	m, err := plugins.New(nil, "agate-test", store, plugins.Logger(logging.NewNoOpLogger()),
		plugins.ConsoleLogger(logging.NewNoOpLogger()))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(ctx) })
	s, err := server.New().WithStore(store).WithManager(m).WithAddresses([]string{"127.0.0.1:0"}).Init(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler)
	t.Cleanup(ts.Close)

	files, err := filepath.Glob(filepath.Join(dir, "*.rego"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.rego") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodPut, ts.URL+"/v1/policies/"+filepath.Base(f), bytes.NewReader(src))
		req.Header.Set("Content-Type", "text/plain")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT /v1/policies/%s: %s: %s", filepath.Base(f), resp.Status, body)
		}
	}
	return ts.URL
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
