package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/bus"
	"github.com/agate-gw/agate/httpapi"
	"github.com/agate-gw/agate/tool"
	"github.com/agate-gw/agate/tools"
	"github.com/agate-gw/agate/turn"
	"github.com/google/uuid"
)

// toolGate is the tools as the gateway offers them: the catalogue behind authorization
// (OpenFGA tool#can_use) and policy (OPA tool.execute). It implements turn.Tools for the
// turns and httpapi.Tools for GET /v1/tools and POST /v1/tool/request.
type toolGate struct {
	remote *remoteTools // nil without Kafka: kafka tools cannot run
	reg    *tool.Registry
	offer  []string // offered in turns
	authz  httpapi.Authorizer
	policy httpapi.Policy
	store  turn.Sessions
	log    *slog.Logger
}

// wireTools loads the catalogue: AGATE_TOOLS_DIR, else the built-in one.
func wireTools(cfg config, authz httpapi.Authorizer, policy httpapi.Policy, store turn.Sessions, log *slog.Logger) (*toolGate, error) {
	bc := tool.BuiltinConfig{}
	for _, h := range strings.Split(cfg.FetchAllow, ",") {
		if h = strings.TrimSpace(h); h != "" {
			bc.FetchAllow = append(bc.FetchAllow, h)
		}
	}
	if err := bc.Validate(); err != nil {
		return nil, fmt.Errorf("AGATE_FETCH_ALLOW=%q: %w", cfg.FetchAllow, err)
	}
	fsys := tools.Catalogue()
	if cfg.ToolsDir != "" {
		fsys = os.DirFS(cfg.ToolsDir)
	}
	reg, err := tool.Load(fsys, tool.Builtins(bc))
	if err != nil {
		return nil, err
	}
	reg.Logger = log
	var offer []string
	for _, name := range strings.Split(cfg.TurnTools, ",") {
		switch name = strings.TrimSpace(name); {
		case name == "":
		case name == "*":
			offer = reg.Names()
		default:
			if _, ok := reg.Get(name); !ok {
				return nil, fmt.Errorf("AGATE_TURN_TOOLS=%q: no tool %q in the catalogue (%s)", cfg.TurnTools, name, strings.Join(reg.Names(), ", "))
			}
			offer = append(offer, name)
		}
	}
	log.Info("tools loaded", "tools", reg.Names(), "offered_in_turns", offer)
	return &toolGate{reg: reg, offer: slices.Compact(offer), authz: authz, policy: policy, store: store, log: log}, nil
}

// Offer implements turn.Tools: the tools of AGATE_TURN_TOOLS; a call the caller may not
// make is refused, and the model told so.
func (g *toolGate) Offer(context.Context, agate.Turn) []agate.Tool {
	return g.reg.Specs(g.offer...)
}

// Call implements turn.Tools for a turn, on behalf of its session's owner. Only the
// tools offered may be called: a model (or a prompt injected into it) cannot reach the
// rest of the catalogue.
func (g *toolGate) Call(ctx context.Context, t agate.Turn, call agate.ToolCall) turn.ToolOutcome {
	if !slices.Contains(g.offer, call.Name) {
		return turn.ToolOutcome{Status: turn.ToolError, Text: fmt.Sprintf("There is no tool %q here. The tools are: %s.", call.Name, strings.Join(g.offer, ", "))}
	}
	sess, err := g.store.Session(ctx, t.Tenant, t.SessionID)
	if err != nil {
		return turn.ToolOutcome{Status: turn.ToolError, Text: "The tool could not be run: " + agate.ErrorMessage(err)}
	}
	ctx = context.WithValue(ctx, sessionKey{}, t.SessionID)
	ctx = context.WithValue(ctx, traceKey{}, t.ID)
	return g.Run(ctx, agate.Principal{Tenant: t.Tenant, Subject: sess.Subject}, call)
}

// Run validates, authorizes and runs one call for p.
func (g *toolGate) Run(ctx context.Context, p agate.Principal, call agate.ToolCall) turn.ToolOutcome {
	spec, ok := g.reg.Get(call.Name)
	if !ok {
		return turn.ToolOutcome{Status: turn.ToolError, Text: fmt.Sprintf("There is no tool %q. The tools are: %s.", call.Name, strings.Join(g.reg.Names(), ", "))}
	}
	args := json.RawMessage(call.Arguments)
	if err := g.reg.Validate(call.Name, args); err != nil {
		return turn.ToolOutcome{Status: turn.ToolError, Text: agate.ErrorMessage(err)}
	}
	if why := g.refusal(ctx, p, spec); why != "" {
		return turn.ToolOutcome{Status: turn.ToolBlocked, Text: why}
	}
	if spec.Target != tool.TargetInProcess {
		if g.remote == nil {
			return turn.ToolOutcome{Status: turn.ToolError, Text: fmt.Sprintf("The tool %q runs on executors, which this gateway does not reach.", spec.Name)}
		}
		return g.remote.run(ctx, p, spec, call)
	}
	res, err := g.reg.Run(ctx, call.Name, args)
	if err != nil {
		return turn.ToolOutcome{Status: turn.ToolError, Text: agate.ErrorMessage(err)}
	}
	status := turn.ToolOK
	if res.IsError {
		status = turn.ToolError
	}
	return turn.ToolOutcome{Status: status, Text: res.Text, Truncated: res.Truncated}
}

// refusal says why p may not use spec, or "" if it may. A low-risk tool is every member's
// of the tenant (a contextual grant) unless policy says otherwise; a high-risk one needs a
// can_use grant in OpenFGA, which then stands for the policy's "tools:high" scope.
func (g *toolGate) refusal(ctx context.Context, p agate.Principal, spec tool.Spec) string {
	user := httpapi.UserRef(p)
	object := "tool:" + spec.Name
	scopes := slices.Clone(p.Scopes)
	if g.authz != nil {
		contextual := []agate.Tuple{{User: user, Relation: "member", Object: httpapi.TenantRef(p.Tenant)}}
		if spec.Risk != tool.RiskHigh {
			contextual = append(contextual, agate.Tuple{User: httpapi.TenantRef(p.Tenant) + "#member", Relation: "can_use", Object: object})
		}
		ok, err := g.authz.Check(ctx, agate.Tuple{User: user, Relation: "can_use", Object: object}, contextual...)
		switch {
		case err != nil:
			g.log.Warn("tool authorization failed", "tool", spec.Name, "err", err)
			return fmt.Sprintf("The tool %q cannot be authorized right now; try again later.", spec.Name)
		case !ok:
			return fmt.Sprintf("The tool %q may not be used by this user.", spec.Name)
		case spec.Risk == tool.RiskHigh:
			scopes = append(scopes, "tools:high")
		}
	}
	if g.policy != nil {
		p.Scopes = scopes
		d, err := g.policy.Decide(ctx, agate.PolicyInput{Principal: p, Tenant: p.Tenant, Action: "tool.execute",
			Resource: map[string]any{"type": "tool", "name": spec.Name},
			Context:  map[string]any{"tool": spec.Name, "tool_risk": spec.Risk}, Usage: map[string]any{}})
		switch {
		case err != nil:
			return fmt.Sprintf("The tool %q cannot be checked against the policy right now; try again later.", spec.Name)
		case !d.Allow:
			return fmt.Sprintf("The policy refuses the tool %q: %s.", spec.Name, d.Reason)
		}
	}
	return ""
}

// Usable implements httpapi.Tools: the tools p may use.
func (g *toolGate) Usable(ctx context.Context, p agate.Principal) []agate.Tool {
	var out []agate.Tool
	for _, s := range g.reg.List() {
		if g.refusal(ctx, p, s) == "" {
			out = append(out, s.Tool())
		}
	}
	return out
}

// remoteTools sends calls of kafka tools to executors: a ToolRequest goes through the
// outbox to tool.requests (relayed when Kafka is reachable), and the result comes back on
// tool.results to the replica's Waiters.
type remoteTools struct {
	enqueue func(ctx context.Context, recs ...agate.OutboxRecord) error
	poke    func()
	waiters *bus.Waiters
	log     *slog.Logger
}

func (rt *remoteTools) run(ctx context.Context, p agate.Principal, spec tool.Spec, call agate.ToolCall) turn.ToolOutcome {
	id := uuid.New()
	req := agate.ToolRequest{RequestID: id, Tenant: p.Tenant, ToolName: spec.Name, Args: json.RawMessage(call.Arguments),
		Metadata: map[string]any{"call_id": call.ID}, Deadline: time.Now().Add(spec.Timeout).UTC()}
	if sid, ok := ctx.Value(sessionKey{}).(uuid.UUID); ok {
		req.SessionID = sid
	}
	payload, err := json.Marshal(req)
	if err != nil {
		return turn.ToolOutcome{Status: turn.ToolError, Text: "The tool call could not be encoded."}
	}
	wait, cancel := rt.waiters.Expect(id)
	defer cancel()
	// Keyed by the call, not the session: a model's parallel calls spread over partitions.
	// The W3C trace context names the turn (trace) and the call (span), for the executor's
	// logs and its result.
	trace, _ := ctx.Value(traceKey{}).(uuid.UUID)
	if trace == uuid.Nil {
		trace = uuid.New()
	}
	headers := map[string]string{"traceparent": "00-" + hex.EncodeToString(trace[:]) + "-" + hex.EncodeToString(id[:8]) + "-01"}
	if err := rt.enqueue(ctx, agate.OutboxRecord{Topic: agate.TopicToolRequests, Key: id.String(), Payload: payload, Headers: headers}); err != nil {
		rt.log.Warn("enqueue a tool request", "tool", spec.Name, "err", err)
		return turn.ToolOutcome{Status: turn.ToolError, Text: fmt.Sprintf("The tool %q could not be sent to its executors; try again later.", spec.Name)}
	}
	rt.poke()
	wctx, stop := context.WithTimeout(ctx, spec.Timeout)
	defer stop()
	res, err := wait(wctx)
	switch {
	case ctx.Err() != nil:
		return turn.ToolOutcome{Status: turn.ToolError, Text: "The call was cancelled."} // the turn ends without it
	case err != nil:
		return turn.ToolOutcome{Status: turn.ToolError, Text: fmt.Sprintf("The tool %q did not answer within %s.", spec.Name, spec.Timeout)}
	}
	status := turn.ToolOK
	if res.Status != turn.ToolOK {
		status = turn.ToolError
	}
	return turn.ToolOutcome{Status: status, Text: res.Text, Truncated: res.Truncated}
}

// sessionKey and traceKey carry a turn's session id and turn id to remoteTools, for the
// request.
type (
	sessionKey struct{}
	traceKey   struct{}
)
