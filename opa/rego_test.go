package opa_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/tester"
)

// policyDir holds the gateway's policies and their Rego tests.
const policyDir = "../policy"

// regoTests runs the Rego tests of dir with OPA's own test runner (what `opa test dir`
// runs) and returns how many ran and the names of those that failed or errored.
func regoTests(t *testing.T, dir string) (ran int, failed []string) {
	t.Helper()
	results, err := tester.Run(t.Context(), dir)
	if err != nil {
		t.Fatalf("opa test %s: %v", dir, err)
	}
	for _, r := range results {
		if r.Skip {
			continue
		}
		ran++
		if !r.Pass() {
			failed = append(failed, r.Package+"."+r.Name)
			t.Logf("%s (at %v)", r, r.Location)
			if r.Error != nil {
				t.Logf("  error: %v", r.Error)
			}
			if r.FailedAt != nil {
				t.Logf("  failed at %v: %v", r.FailedAt.Location, r.FailedAt)
			}
		}
	}
	return ran, failed
}

// TestPolicyRegoTestsPass is `opa test policy/` in every go test run: a failing or erroring
// Rego test fails the build.
func TestPolicyRegoTestsPass(t *testing.T) {
	ran, failed := regoTests(t, policyDir)
	if len(failed) > 0 {
		t.Errorf("Rego tests failed: %s", strings.Join(failed, ", "))
	}
	if ran < 20 {
		t.Errorf("ran %d Rego tests in %s, want the whole suite (≥ 20): are the *_test.rego files there?", ran, policyDir)
	}
}

// TestPoliciesPassStrictCheck is `opa check --strict policy/`: no unused variables or
// imports, no deprecated built-ins, in the policies and their tests.
func TestPoliciesPassStrictCheck(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(policyDir, "*.rego"))
	if err != nil {
		t.Fatal(err)
	}
	modules := map[string]*ast.Module{}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if modules[f], err = ast.ParseModuleWithOpts(f, string(src), ast.ParserOptions{RegoVersion: ast.RegoV1}); err != nil {
			t.Fatal(err)
		}
	}
	c := ast.NewCompiler().WithStrict(true)
	if c.Compile(modules); c.Failed() {
		t.Error(c.Errors)
	}
}

// TestRegoRunnerReportsFailures checks the check above: a failing test and an erroring
// test are reported, a passing one is not.
func TestRegoRunnerReportsFailures(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "p.rego", `package p

answer := 42

conflict := 1 if true

conflict := 2 if true
`)
	write(t, dir, "p_test.rego", `package p_test

import data.p

test_passes if p.answer == 42

test_fails if p.answer == 41

test_errors if p.conflict == 1
`)
	ran, failed := regoTests(t, dir)
	if ran != 3 {
		t.Errorf("ran %d tests, want 3", ran)
	}
	slices.Sort(failed)
	if diff := cmp.Diff([]string{"data.p_test.test_errors", "data.p_test.test_fails"}, failed); diff != "" {
		t.Errorf("failed tests (-want +got):\n%s", diff)
	}
}

func write(t *testing.T, dir, name, src string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
}
