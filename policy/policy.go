// Package policy holds the gateway's Rego policies (package agate, entry point
// data.agate.decision), built into the binary; AGATE_POLICY_DIR replaces them with a
// directory that is reloaded when it changes.
package policy

import "embed"

// FS holds the policy files (the *_test.rego files too; the engine skips them).
//
//go:embed *.rego
var FS embed.FS
