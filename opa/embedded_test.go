package opa_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/opa"
	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
)

func TestNewEmbeddedRejectsBrokenPolicies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string // in the error
	}{
		{"syntax error", map[string]string{"agate.rego": "package agate\n\ndecision := {\"allow\": true\n"},
			[]string{"agate.rego:", "rego_parse_error"}},
		{"rego v0 syntax", map[string]string{"agate.rego": "package agate\n\ndefault allow = false\nallow { input.x }\n"},
			[]string{"agate.rego:", "rego_parse_error"}},
		{"unknown function", map[string]string{"agate.rego": "package agate\n\ndecision := no_such_function(input)\n"},
			[]string{"agate.rego:3", "rego_type_error", "no_such_function"}},
		{"unsafe variable", map[string]string{"agate.rego": "package agate\n\ndecision := {\"allow\": x}\n"},
			[]string{"agate.rego:3", "rego_unsafe_var_error"}},
		{"no decision rule", map[string]string{"other.rego": "package other\n\ndecision := {\"allow\": true}\n"},
			[]string{"no rule defines data.agate.decision", "other.rego"}},
		{"no policy files", map[string]string{"README.md": "policies go here\n", "agate_test.rego": "package agate_test\n"},
			[]string{"no .rego files"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, src := range tc.files {
				write(t, dir, name, src)
			}
			_, err := opa.NewEmbedded(t.Context(), dir, discard())
			if err == nil {
				t.Fatal("NewEmbedded succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	if _, err := opa.NewEmbedded(t.Context(), filepath.Join(t.TempDir(), "missing"), discard()); err == nil {
		t.Error("NewEmbedded of a missing directory succeeded, want an error")
	}
}

// TestEmbeddedLoadsOnlyPolicyFiles: tests, hidden files (an editor's lock file) and other
// files in the directory are not part of the policy.
func TestEmbeddedLoadsOnlyPolicyFiles(t *testing.T) {
	dir := copyPolicies(t)
	write(t, dir, "broken_test.rego", "package agate_test\n\ntest_x if {\n")
	write(t, dir, ".#agate.rego", "not rego")
	write(t, dir, "notes.txt", "not rego")
	if err := os.Mkdir(filepath.Join(dir, "sub.rego"), 0o755); err != nil {
		t.Fatal(err)
	}
	e, err := opa.NewEmbedded(t.Context(), dir, discard())
	if err != nil {
		t.Fatal(err)
	}
	wantDecision(t, e, send(alice, "acme", 0, 0), allow("member of the tenant"))
}

// TestDecideFailsClosed: a policy that gives no decision, or not a well-formed one, is an
// agate.EInternal error and a denial, never an allow.
func TestDecideFailsClosed(t *testing.T) {
	for _, tc := range []struct {
		name, policy string
	}{
		{"undefined", `package agate

decision := {"allow": true} if input.action == "conversation.send"
`},
		{"conflict", `package agate

decision := {"allow": true} if input.tenant == "acme"

decision := {"allow": false} if input.action == "model.use"
`},
		{"allow not a boolean", `package agate

decision := {"allow": "yes", "reason": "ok"}
`},
		{"allow missing", `package agate

decision := {"reason": "ok"}
`},
		{"reason not a string", `package agate

decision := {"allow": true, "reason": 7}
`},
		{"not an object", `package agate

decision := true
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "agate.rego", tc.policy)
			e, err := opa.NewEmbedded(t.Context(), dir, discard())
			if err != nil {
				t.Fatal(err)
			}
			got, err := e.Decide(t.Context(), modelUse("openai/gpt-4.1", nil, nil, 0, 0))
			if code := agate.ErrorCode(err); code != agate.EInternal {
				t.Errorf("Decide: error %v (code %q), want code %q", err, code, agate.EInternal)
			}
			if got != (agate.PolicyDecision{}) {
				t.Errorf("Decide with an error returned %+v, want the zero decision", got)
			}
		})
	}
}

// TestPolicyChangesApplyWithoutRestart: Run reloads the directory when a file is added,
// changed or removed; a file that does not compile is logged and the last good policies
// stay in force.
func TestPolicyChangesApplyWithoutRestart(t *testing.T) {
	dir := copyPolicies(t)
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	e, err := opa.NewEmbedded(t.Context(), dir, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	})

	export := action(alice, "conversation.export")
	wantDecision(t, e, export, deny(`unknown action "conversation.export"`))

	// A new file in package agate adds an action.
	write(t, dir, "export.rego", `package agate

known_action if input.action == "conversation.export"

decision := send if input.action == "conversation.export"
`)
	eventually(t, "the new action is allowed", func() bool { return decides(e, export, allow("member of the tenant")) })

	// A broken file changes nothing but the log.
	write(t, dir, "broken.rego", "package agate\n\ndecision := {\n")
	eventually(t, "the failed reload is logged", func() bool {
		return strings.Contains(logs.String(), "policy reload failed") && strings.Contains(logs.String(), "broken.rego:")
	})
	wantDecision(t, e, export, allow("member of the tenant"))
	wantDecision(t, e, send(alice, "globex", 0, 0), deny("cross-tenant"))

	// Editing the main file back and forth applies too.
	if err := os.Remove(filepath.Join(dir, "broken.rego")); err != nil {
		t.Fatal(err)
	}
	main := filepath.Join(dir, "agate.rego")
	src, err := os.ReadFile(main)
	if err != nil {
		t.Fatal(err)
	}
	write(t, dir, "agate.rego", strings.Replace(string(src), `deny("cross-tenant")`, `deny("wrong tenant")`, 1))
	eventually(t, "the edited reason applies", func() bool { return decides(e, send(alice, "globex", 0, 0), deny("wrong tenant")) })

	if err := os.Remove(filepath.Join(dir, "export.rego")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the removed action is unknown again", func() bool {
		return decides(e, export, deny(`unknown action "conversation.export"`))
	})
}

func TestRunFailsWithoutDirectory(t *testing.T) {
	dir := copyPolicies(t)
	e, err := opa.NewEmbedded(t.Context(), dir, discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := e.Run(t.Context()); err == nil {
		t.Error("Run of a removed directory returned nil, want an error")
	}
	wantDecision(t, e, send(alice, "acme", 0, 0), allow("member of the tenant")) // still the loaded policies
}

// TestInputIsTheJSONForm: Embedded's input, built without JSON, is the value of the JSON
// that Remote sends, so that both deciders see the same document.
func TestInputIsTheJSONForm(t *testing.T) {
	type routing struct {
		Allow []string `json:"allow"`
		Deny  []string `json:"deny,omitempty"`
	}
	for _, in := range []agate.PolicyInput{
		{},
		send(alice, "acme", 10, 100),
		modelUse("openai/gpt-4.1", []string{"openai/*"}, []string{"*-pro"}, 1, 2),
		toolExec(ciKey, "shell", "high", "fs_write"),
		{
			Principal: agate.Principal{Tenant: "t", Subject: "s", Scopes: []string{}, Via: agate.ViaAPIKey, KeyID: "k"},
			Tenant:    "t", Action: "model.use",
			Context: map[string]any{"routing": routing{Allow: []string{"a/*"}}, "n": []int{1, 2}, "f": 1.5, "nil": nil,
				"nested": map[string]any{"when": time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}},
			// Not a uint64 of 1<<63 or more: OPA v1.22.3's ast.InterfaceToValue wraps it
			// to a negative number (uint64 → int). Token counts never come near.
			Usage: map[string]any{"tokens_spent": int64(1) << 60, "tokens_limit": uint64(1)<<63 - 1},
		},
	} {
		got, err := opa.InputValue(in)
		if err != nil {
			t.Fatal(err)
		}
		js, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ast.ValueFromReader(bytes.NewReader(js))
		if err != nil {
			t.Fatal(err)
		}
		if ast.Compare(got, want) != 0 {
			t.Errorf("input of %s:\n got %v\nwant %v", js, got, want)
		}
	}
	// The principal is converted field by field: a new field must be added there.
	if n := reflect.TypeFor[agate.Principal]().NumField(); n != 5 {
		t.Errorf("agate.Principal has %d fields, opa.principalValue knows 5: add the new ones", n)
	}
}

func wantDecision(t *testing.T, d opa.Decider, in agate.PolicyInput, want agate.PolicyDecision) {
	t.Helper()
	got, err := d.Decide(t.Context(), in)
	if err != nil {
		t.Fatalf("Decide(%s): %v", in.Action, err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Decide(%s) (-want +got):\n%s", in.Action, diff)
	}
}

func decides(d opa.Decider, in agate.PolicyInput, want agate.PolicyDecision) bool {
	got, err := d.Decide(context.Background(), in)
	return err == nil && got == want
}

// eventually waits up to 5 s for cond: a reload is due 100 ms after the last change.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after 5 s: want %s", what)
		}
	}
}

// copyPolicies copies the policy files of policy/ (not the tests) into a temporary
// directory.
func copyPolicies(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files, err := filepath.Glob(filepath.Join(policyDir, "*.rego"))
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
		write(t, dir, filepath.Base(f), string(src))
	}
	return dir
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
