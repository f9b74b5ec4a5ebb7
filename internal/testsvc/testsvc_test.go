package testsvc_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestOnlyTestsImportIt fails when a package of the module imports testsvc outside its
// _test.go files: starting servers has no place in the gateway.
func TestOnlyTestsImportIt(t *testing.T) {
	const self = "github.com/agate-gw/agate/internal/testsvc"
	out, err := exec.Command("go", "list", "-e", "-json=ImportPath,Imports", "github.com/agate-gw/agate/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		if slices.Contains(p.Imports, self) {
			t.Errorf("%s imports %s outside its tests", p.ImportPath, self)
		}
	}
}
