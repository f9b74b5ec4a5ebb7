package opa_test

import (
	"context"
	"strings"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/opa"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// scripted decides by action, from a table; an action not in it is an error.
type scripted map[string]agate.PolicyDecision

func (s scripted) Decide(_ context.Context, in agate.PolicyInput) (agate.PolicyDecision, error) {
	d, ok := s[in.Action]
	if !ok {
		return agate.PolicyDecision{}, agate.Errorf(agate.EUnavailable, "no answer")
	}
	return d, nil
}

func TestMeasuredCountsDecisions(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	script := scripted{
		"conversation.send": allow("member of the tenant"),
		"model.use":         deny("budget_exceeded"),
		"admin.keys":        deny(`action "admin.keys" needs scope "admin"`),
		"admin.dlq":         allow(`scope "admin"`),
	}
	m := opa.NewMeasured(script, reg)
	for _, a := range []string{"conversation.send", "conversation.send", "model.use", "admin.keys", "admin.dlq", "admin.breakers", "tool.execute"} {
		in := agate.PolicyInput{Action: a}
		wantD, wantErr := script.Decide(t.Context(), in)
		got, err := m.Decide(t.Context(), in)
		if got != wantD || agate.ErrorCode(err) != agate.ErrorCode(wantErr) {
			t.Errorf("Decide(%s) = %+v, %v; want the wrapped decider's %+v, %v", a, got, err, wantD, wantErr)
		}
	}
	want := `
# HELP policy_decisions_total Policy decisions by action and result (allow, deny, or error: no decision, so denied).
# TYPE policy_decisions_total counter
policy_decisions_total{action="admin",result="allow"} 1
policy_decisions_total{action="admin",result="deny"} 1
policy_decisions_total{action="admin",result="error"} 1
policy_decisions_total{action="conversation.send",result="allow"} 2
policy_decisions_total{action="model.use",result="deny"} 1
policy_decisions_total{action="tool.execute",result="error"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "policy_decisions_total"); err != nil {
		t.Error(err)
	}
}
