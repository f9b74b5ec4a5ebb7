package opa

import (
	"context"
	"strings"

	"github.com/agate-gw/agate"
	"github.com/prometheus/client_golang/prometheus"
)

// Measured is a Decider that counts the decisions of another:
// policy_decisions_total{action, result="allow"|"deny"|"error"}. The action label is the
// action, with every "admin.<route>" counted as "admin"; actions are named by the gateway,
// never by clients, so the label's values are few.
type Measured struct {
	next      Decider
	decisions *prometheus.CounterVec
}

var _ Decider = (*Measured)(nil)

// NewMeasured wraps next and registers its counter on reg. It panics if reg already has
// the counter, as prometheus.Registerer.MustRegister does.
func NewMeasured(next Decider, reg prometheus.Registerer) *Measured {
	m := &Measured{
		next: next,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "policy_decisions_total",
			Help: "Policy decisions by action and result (allow, deny, or error: no decision, so denied).",
		}, []string{"action", "result"}),
	}
	reg.MustRegister(m.decisions)
	return m
}

// Decide returns next's decision and error unchanged, and counts them.
func (m *Measured) Decide(ctx context.Context, in agate.PolicyInput) (agate.PolicyDecision, error) {
	d, err := m.next.Decide(ctx, in)
	result := "deny"
	switch {
	case err != nil:
		result = "error"
	case d.Allow:
		result = "allow"
	}
	m.decisions.WithLabelValues(actionLabel(in.Action), result).Inc()
	return d, err
}

func actionLabel(action string) string {
	if strings.HasPrefix(action, "admin.") {
		return "admin"
	}
	return action
}
