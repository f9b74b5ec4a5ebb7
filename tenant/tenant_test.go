package tenant_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agate-gw/agate/tenant"
	"github.com/google/go-cmp/cmp"
)

// writeFile writes src to name in dir and returns its path.
func writeFile(t testing.TB, dir, name, src string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// load writes src to a file of its own and loads it.
func load(t testing.TB, src string) (*tenant.Registry, error) {
	t.Helper()
	return tenant.Load(writeFile(t, t.TempDir(), "tenants.yaml", src), nil)
}

func mustLoad(t testing.TB, src string) *tenant.Registry {
	t.Helper()
	r, err := load(t, src)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return r
}

const acmeFile = `
defaults:
  system_prompt: "You are a helpful assistant."
  budgets: {tokens_per_day: 1000, personas: {writer: 100, coder: 200}}
  rate_limits: {requests_per_minute: 60, tokens_per_minute: 6000}
  routing: {allow: ["openai/*"], deny: ["openai/o1*"]}
  fail_open: true
tenants:
  acme:
    system_prompt: "You are Acme's support agent."
    budgets:
      tokens_per_day: 200000
      personas: {researcher: 50000, coder: 0}
    rate_limits: {requests_per_minute: 600}
    routing: {deny: ["anthropic/*"]}
  open:
    budgets: {tokens_per_day: 0}
    routing: {allow: []}
    fail_open: false
  nulls:
    system_prompt:
    budgets:
    routing: {allow: ~}
  empty: {}
  bare:
`

func TestGetMergesTheTenantsEntryOverTheDefaults(t *testing.T) {
	r := mustLoad(t, acmeFile)
	defaults := tenant.Settings{
		SystemPrompt:        "You are a helpful assistant.",
		TokensPerDay:        1000,
		PersonaTokensPerDay: map[string]int64{"writer": 100, "coder": 200},
		RequestsPerMinute:   60,
		TokensPerMinute:     6000,
		Allow:               []string{"openai/*"},
		Deny:                []string{"openai/o1*"},
		FailOpen:            true,
	}
	tests := []struct {
		tenant string
		want   tenant.Settings
	}{
		{"acme", tenant.Settings{
			SystemPrompt:        "You are Acme's support agent.",
			TokensPerDay:        200000,
			PersonaTokensPerDay: map[string]int64{"writer": 100, "coder": 0, "researcher": 50000}, // added to the defaults'
			RequestsPerMinute:   600,
			TokensPerMinute:     6000, // inherited field by field
			Allow:               []string{"openai/*"},
			Deny:                []string{"anthropic/*"}, // a list replaces the default list
			FailOpen:            true,
		}},
		{"open", tenant.Settings{ // zeros and empty lists are values, not absences
			SystemPrompt:        "You are a helpful assistant.",
			TokensPerDay:        0,
			PersonaTokensPerDay: map[string]int64{"writer": 100, "coder": 200},
			RequestsPerMinute:   60,
			TokensPerMinute:     6000,
			Allow:               []string{},
			Deny:                []string{"openai/o1*"},
			FailOpen:            false,
		}},
		{"nulls", defaults}, // null fields are absent
		{"empty", defaults},
		{"bare", defaults},
		{"unknown", defaults},
		{"", defaults},
		{"ACME", defaults}, // names are exact
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, r.Get(tt.tenant)); diff != "" {
			t.Errorf("Get(%q) (-want +got):\n%s", tt.tenant, diff)
		}
	}
	if diff := cmp.Diff([]string{"acme", "bare", "empty", "nulls", "open"}, r.Tenants()); diff != "" {
		t.Errorf("Tenants() (-want +got):\n%s", diff)
	}
}

func TestUnknownTenantGetsTheDefaultsOfAFileWithoutDefaults(t *testing.T) {
	r := mustLoad(t, "tenants:\n  acme: {budgets: {tokens_per_day: 5}}\n")
	if diff := cmp.Diff(tenant.Settings{}, r.Get("globex")); diff != "" {
		t.Errorf("Get(globex) (-want +got):\n%s", diff)
	}
	if got := r.Get("acme").TokensPerDay; got != 5 {
		t.Errorf("Get(acme).TokensPerDay = %d, want 5", got)
	}
}

func TestStaticGivesEveryTenantTheDefaults(t *testing.T) {
	defaults := tenant.Settings{SystemPrompt: "Be brief.", TokensPerDay: 10, PersonaTokensPerDay: map[string]int64{"p": 1}, Allow: []string{"a/*"}}
	r := tenant.Static(defaults)
	defaults.PersonaTokensPerDay["p"] = 99 // the registry has its own copy
	defaults.Allow[0] = "changed"
	want := tenant.Settings{SystemPrompt: "Be brief.", TokensPerDay: 10, PersonaTokensPerDay: map[string]int64{"p": 1}, Allow: []string{"a/*"}}
	for _, name := range []string{"acme", ""} {
		if diff := cmp.Diff(want, r.Get(name)); diff != "" {
			t.Errorf("Get(%q) (-want +got):\n%s", name, diff)
		}
	}
	if err := r.Reload(); err != nil {
		t.Errorf("Reload() of a static registry = %v, want nil", err)
	}
}

func TestTheExampleFileLoads(t *testing.T) {
	r, err := tenant.Load("../conf/tenants.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	acme := r.Get("acme")
	want := tenant.Settings{
		SystemPrompt:        "You are Acme's support agent.",
		TokensPerDay:        200000,
		PersonaTokensPerDay: map[string]int64{"researcher": 50000},
		RequestsPerMinute:   600,
		Allow:               []string{},
		Deny:                []string{"anthropic/*"},
	}
	if diff := cmp.Diff(want, acme); diff != "" {
		t.Errorf("Get(acme) (-want +got):\n%s", diff)
	}
}

func TestLoadRefusesInvalidFilesWithPreciseErrors(t *testing.T) {
	tests := []struct {
		name, src string
		want      string // the error, after "<dir>/"
	}{
		{"negative budget", "tenants:\n  acme:\n    budgets:\n      tokens_per_day: -5\n",
			"tenants.yaml:4:23: tenants.acme.budgets.tokens_per_day: want a whole number >= 0, got -5"},
		{"fractional budget", "defaults: {budgets: {tokens_per_day: 1.5}}\n",
			"tenants.yaml:1:38: defaults.budgets.tokens_per_day: want a whole number >= 0, got 1.5"},
		{"quoted number", "defaults: {rate_limits: {requests_per_minute: \"60\"}}\n",
			`tenants.yaml:1:47: defaults.rate_limits.requests_per_minute: want a whole number >= 0, got "60"`},
		{"huge number", "defaults: {rate_limits: {tokens_per_minute: 99999999999999999999}}\n",
			"tenants.yaml:1:45: defaults.rate_limits.tokens_per_minute: want a whole number >= 0, got 99999999999999999999"},
		{"negative persona budget", "tenants:\n  acme:\n    budgets:\n      personas: {researcher: -1}\n",
			"tenants.yaml:4:30: tenants.acme.budgets.personas.researcher: want a whole number >= 0, got -1"},
		{"unknown top-level field", "default: {}\n",
			"tenants.yaml:1:1: default: unknown field (known fields: defaults, tenants)"},
		{"unknown tenant field", "tenants:\n  acme:\n    budget: {tokens_per_day: 5}\n",
			"tenants.yaml:3:5: tenants.acme.budget: unknown field (known fields: system_prompt, budgets, rate_limits, routing, fail_open)"},
		{"unknown budget field", "tenants:\n  acme:\n    budgets: {tokens_per_dya: 5}\n",
			"tenants.yaml:3:15: tenants.acme.budgets.tokens_per_dya: unknown field (known fields: tokens_per_day, personas)"},
		{"unknown routing field", "defaults:\n  routing: {block: []}\n",
			"tenants.yaml:2:13: defaults.routing.block: unknown field (known fields: allow, deny)"},
		{"unknown rate limit field", "defaults:\n  rate_limits: {rpm: 1}\n",
			"tenants.yaml:2:17: defaults.rate_limits.rpm: unknown field (known fields: requests_per_minute, tokens_per_minute)"},
		{"invalid pattern", "tenants:\n  acme:\n    routing:\n      deny: [\"anthropic/*\", \"gpt-[4\"]\n",
			`tenants.yaml:4:29: tenants.acme.routing.deny[1]: invalid model pattern "gpt-[4": syntax error in pattern (path.Match syntax: *, ?, [a-z], \ escapes)`},
		{"trailing backslash", "defaults: {routing: {allow: ['a\\']}}\n",
			`tenants.yaml:1:30: defaults.routing.allow[0]: invalid model pattern "a\\": syntax error in pattern (path.Match syntax: *, ?, [a-z], \ escapes)`},
		{"empty pattern", "defaults: {routing: {allow: [\"\"]}}\n",
			"tenants.yaml:1:30: defaults.routing.allow[0]: empty model pattern"},
		{"pattern not a string", "defaults: {routing: {allow: [1]}}\n",
			"tenants.yaml:1:30: defaults.routing.allow[0]: want a model pattern (a string), got 1"},
		{"patterns not a list", "defaults: {routing: {deny: \"anthropic/*\"}}\n",
			`tenants.yaml:1:28: defaults.routing.deny: want a list of model patterns, got "anthropic/*"`},
		{"empty tenant name", "tenants:\n  \"\": {}\n",
			`tenants.yaml:2:3: tenants."": empty tenant name`},
		{"null tenant name", "tenants:\n  ~: {}\n",
			`tenants.yaml:2:3: tenants."": empty tenant name`},
		{"tenant name with spaces", "tenants:\n  \"acme \": {}\n",
			`tenants.yaml:2:3: tenants."acme ": tenant name has leading or trailing spaces`},
		{"empty persona name", "defaults: {budgets: {personas: {\"\": 5}}}\n",
			`tenants.yaml:1:33: defaults.budgets.personas."": empty persona name`},
		{"duplicate tenant", "tenants:\n  acme: {}\n  globex: {}\n  acme: {}\n",
			"tenants.yaml:4:3: tenants.acme: tenant given twice (first at line 2)"},
		{"duplicate field", "defaults:\n  fail_open: true\n  fail_open: false\n",
			"tenants.yaml:3:3: defaults.fail_open: given twice (first at line 2)"},
		{"fail_open not a bool", "defaults: {fail_open: yes}\n",
			`tenants.yaml:1:23: defaults.fail_open: want true or false, got "yes"`},
		{"system prompt not a string", "defaults: {system_prompt: 42}\n",
			"tenants.yaml:1:27: defaults.system_prompt: want a string, got 42 (quote it)"},
		{"tenant not a mapping", "tenants:\n  acme: [1]\n",
			"tenants.yaml:2:9: tenants.acme: want a mapping with system_prompt, budgets, rate_limits, routing, fail_open, got a list"},
		{"tenants not a mapping", "tenants: [acme]\n",
			"tenants.yaml:1:10: tenants: want a mapping of tenant names, got a list"},
		{"budgets not a mapping", "defaults: {budgets: 5}\n",
			"tenants.yaml:1:21: defaults.budgets: want a mapping with tokens_per_day, personas, got 5"},
		{"top level not a mapping", "- acme\n",
			"tenants.yaml:1:1: (top level): want a mapping with defaults, tenants, got a list"},
		{"empty file", "",
			"tenants.yaml: the file is empty; want a mapping with defaults and tenants"},
		{"only comments", "# nothing yet\n",
			"tenants.yaml: the file is empty; want a mapping with defaults and tenants"},
		{"null document", "---\n",
			"tenants.yaml: the file holds no settings; want a mapping with defaults and tenants"},
		{"two documents", "tenants: {}\n---\ntenants: {}\n",
			"tenants.yaml:2:1: a second YAML document; want only one"},
		{"syntax error", "tenants:\n  acme: {\n",
			"tenants.yaml:2: did not find expected node content"},
		{"every error at once", "defaults: {budgets: {tokens_per_day: -1}}\ntenants:\n  acme: {fail_open: 1, routing: {allow: [\"[\"]}}\n",
			"tenants.yaml:1:38: defaults.budgets.tokens_per_day: want a whole number >= 0, got -1\n" +
				"tenants.yaml:3:21: tenants.acme.fail_open: want true or false, got 1\n" +
				`tenants.yaml:3:42: tenants.acme.routing.allow[0]: invalid model pattern "[": syntax error in pattern (path.Match syntax: *, ?, [a-z], \ escapes)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			r, err := tenant.Load(writeFile(t, dir, "tenants.yaml", tt.src), nil)
			if err == nil {
				t.Fatalf("Load succeeded (%+v), want error %q", r.Get("acme"), tt.want)
			}
			if got := strings.ReplaceAll(err.Error(), dir+string(filepath.Separator), ""); got != tt.want {
				t.Errorf("Load error:\n got: %s\nwant: %s", got, tt.want)
			}
		})
	}
}

func TestLoadOfAMissingFileNamesIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := tenant.Load(path, nil)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Load(%s) = %v, want an error naming the file", path, err)
	}
}

func TestLoadAcceptsAliasesAndYAMLNumberForms(t *testing.T) {
	r := mustLoad(t, `
defaults:
  routing: {deny: &risky ["x/*"]}
tenants:
  acme:
    budgets: {tokens_per_day: 1_000}
    rate_limits: {requests_per_minute: 0x10}
    routing: {allow: *risky}
`)
	got := r.Get("acme")
	want := tenant.Settings{TokensPerDay: 1000, RequestsPerMinute: 16, Allow: []string{"x/*"}, Deny: []string{"x/*"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Get(acme) (-want +got):\n%s", diff)
	}
}
