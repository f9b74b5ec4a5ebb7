// Package opa makes the gateway's policy decisions with Open Policy Agent: in process
// (Embedded, the Rego of policy/ compiled into a prepared query and reloaded when the files
// change) or by asking an OPA server (Remote). Both ask for data.agate.decision with the
// JSON form of agate.PolicyInput as input, and both fail closed.
package opa

import (
	"context"
	"fmt"

	"github.com/agate-gw/agate"
)

// Decider makes one policy decision. It is the shape of Embedded, Remote and Measured.
//
// Contract, for every implementation: a nil error means the policy answered, and the
// decision's Allow is its answer. A non-nil error means there is no decision: the
// returned PolicyDecision is the zero value (Allow false) and the caller must treat the
// action as denied. Errors carry agate.EUnavailable when the policy engine could not be
// asked (a remote OPA that is down, slow or answering 5xx; retrying later may work) and
// agate.EInternal when it answered but not with a decision (a policy that fails to
// evaluate, is undefined for the input, or does not give a boolean allow; a bug or a
// misconfiguration). When ctx ends first the error wraps ctx.Err() and has no code.
// Decide may be called concurrently.
type Decider interface {
	Decide(ctx context.Context, in agate.PolicyInput) (agate.PolicyDecision, error)
}

// query is the decision every policy set must define.
const query = "data.agate.decision"

// decision reads a decision from the JSON-like value v of data.agate.decision: an object
// with a boolean "allow" and, if present, a string "reason". Anything else is the policy
// misbehaving and an agate.EInternal error.
func decision(v any) (agate.PolicyDecision, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return agate.PolicyDecision{}, malformed(fmt.Errorf("%s is %T, not an object", query, v))
	}
	allow, ok := m["allow"].(bool)
	if !ok {
		return agate.PolicyDecision{}, malformed(fmt.Errorf("%s.allow is %T, not a boolean", query, m["allow"]))
	}
	d := agate.PolicyDecision{Allow: allow}
	if r, found := m["reason"]; found {
		if d.Reason, ok = r.(string); !ok {
			return agate.PolicyDecision{}, malformed(fmt.Errorf("%s.reason is %T, not a string", query, r))
		}
	}
	return d, nil
}

func malformed(err error) error {
	return agate.Wrap(agate.EInternal, err, "The policy gave no valid decision.")
}

func undefined() error {
	return agate.Wrap(agate.EInternal, fmt.Errorf("%s is undefined for the input", query),
		"The policy gave no decision.")
}
