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
	"sync"
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

	mu       sync.Mutex
	subjects map[uuid.UUID]string // turn → its session owner's subject (a deleted session's id may be reused: not by session)
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

// Plan implements turn.Tools for a turn, on behalf of its session's owner. Only the
// tools offered may be called: a model (or a prompt injected into it) cannot reach the
// rest of the catalogue. A call for executors gets its request, which the store sends
// with the call's tool.start event.
func (g *toolGate) Plan(ctx context.Context, t agate.Turn, call agate.ToolCall) turn.ToolPlan {
	if !slices.Contains(g.offer, call.Name) {
		return answer(turn.ToolError, fmt.Sprintf("There is no tool %q here. The tools are: %s.", call.Name, strings.Join(g.offer, ", ")))
	}
	subject, err := g.subject(ctx, t)
	if err != nil {
		return answer(turn.ToolError, "The tool could not be run: "+agate.ErrorMessage(err))
	}
	p := agate.Principal{Tenant: t.Tenant, Subject: subject}
	spec, out := g.admit(ctx, p, call)
	switch {
	case out != nil:
		return turn.ToolPlan{Outcome: out}
	case spec.Target == tool.TargetInProcess:
		return turn.ToolPlan{}
	case g.remote == nil:
		return answer(turn.ToolError, fmt.Sprintf("The tool %q runs on executors, which this gateway does not reach.", spec.Name))
	}
	req, traceparent, tk, release := g.remote.prepare(p, spec, call, t.SessionID, t.ID)
	return turn.ToolPlan{Request: &req, Traceparent: traceparent, Ticket: tk, Release: release}
}

// maxSubjects bounds the turns whose session owner toolGate remembers.
const maxSubjects = 10000

// subject returns the owner's subject of t's session: read once per turn, not once per
// call (a turn may make many).
func (g *toolGate) subject(ctx context.Context, t agate.Turn) (string, error) {
	g.mu.Lock()
	subject, ok := g.subjects[t.ID]
	g.mu.Unlock()
	if ok {
		return subject, nil
	}
	sess, err := g.store.Session(ctx, t.Tenant, t.SessionID)
	if err != nil {
		return "", err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.subjects == nil || len(g.subjects) >= maxSubjects {
		g.subjects = make(map[uuid.UUID]string)
	}
	g.subjects[t.ID] = sess.Subject
	return sess.Subject, nil
}

// Call implements turn.Tools: it runs an in-process call, or waits for the executors'
// answer to a request that left with the call's tool.start.
func (g *toolGate) Call(ctx context.Context, _ agate.Turn, call agate.ToolCall, plan turn.ToolPlan) turn.ToolOutcome {
	if tk, ok := plan.Ticket.(ticket); ok {
		return g.remote.await(ctx, tk)
	}
	return g.runHere(ctx, call)
}

// Run validates, authorizes and runs one call for p (POST /v1/tool/request). A call for
// executors goes through the outbox on its own.
func (g *toolGate) Run(ctx context.Context, p agate.Principal, call agate.ToolCall) turn.ToolOutcome {
	spec, out := g.admit(ctx, p, call)
	switch {
	case out != nil:
		return *out
	case spec.Target == tool.TargetInProcess:
		return g.runHere(ctx, call)
	case g.remote == nil:
		return turn.ToolOutcome{Status: turn.ToolError, Text: fmt.Sprintf("The tool %q runs on executors, which this gateway does not reach.", spec.Name)}
	}
	req, traceparent, tk, release := g.remote.prepare(p, spec, call, uuid.Nil, uuid.Nil)
	defer release()
	if err := g.remote.send(ctx, req, traceparent); err != nil {
		return turn.ToolOutcome{Status: turn.ToolError, Text: fmt.Sprintf("The tool %q could not be sent to its executors; try again later.", spec.Name)}
	}
	return g.remote.await(ctx, tk)
}

// admit validates and authorizes a call: the tool's spec, or the outcome that answers it
// without running it.
func (g *toolGate) admit(ctx context.Context, p agate.Principal, call agate.ToolCall) (tool.Spec, *turn.ToolOutcome) {
	spec, ok := g.reg.Get(call.Name)
	if !ok {
		o := turn.ToolOutcome{Status: turn.ToolError, Text: fmt.Sprintf("There is no tool %q. The tools are: %s.", call.Name, strings.Join(g.reg.Names(), ", "))}
		return spec, &o
	}
	if err := g.reg.Validate(call.Name, json.RawMessage(call.Arguments)); err != nil {
		o := turn.ToolOutcome{Status: turn.ToolError, Text: agate.ErrorMessage(err)}
		return spec, &o
	}
	if why := g.refusal(ctx, p, spec); why != "" {
		o := turn.ToolOutcome{Status: turn.ToolBlocked, Text: why}
		return spec, &o
	}
	return spec, nil
}

// runHere runs an in-process tool.
func (g *toolGate) runHere(ctx context.Context, call agate.ToolCall) turn.ToolOutcome {
	res, err := g.reg.Run(ctx, call.Name, json.RawMessage(call.Arguments))
	if err != nil {
		return turn.ToolOutcome{Status: turn.ToolError, Text: agate.ErrorMessage(err)}
	}
	status := turn.ToolOK
	if res.IsError {
		status = turn.ToolError
	}
	return turn.ToolOutcome{Status: status, Text: res.Text, Truncated: res.Truncated}
}

func answer(status, text string) turn.ToolPlan {
	return turn.ToolPlan{Outcome: &turn.ToolOutcome{Status: status, Text: text}}
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
// outbox to tool.requests (relayed when Kafka is reachable) — for a turn, with the call's
// tool.start event, in its transaction — and the result comes back on tool.results to the
// replica's Waiters.
type remoteTools struct {
	enqueue func(ctx context.Context, recs ...agate.OutboxRecord) error
	poke    func()
	waiters *bus.Waiters
	log     *slog.Logger
}

// ticket is a call sent to executors, waiting for its result.
type ticket struct {
	spec     tool.Spec
	deadline time.Time // the request's: executors do not run it after
	wait     func(ctx context.Context) (agate.ToolResult, error)
}

// prepare makes the request of a call and expects its result. The W3C trace context
// names the turn (trace; random without one) and the call (span).
func (rt *remoteTools) prepare(p agate.Principal, spec tool.Spec, call agate.ToolCall, session, turnID uuid.UUID) (agate.ToolRequest, string, ticket, func()) {
	id := uuid.New()
	req := agate.ToolRequest{RequestID: id, SessionID: session, Tenant: p.Tenant, ToolName: spec.Name,
		Args: json.RawMessage(call.Arguments), Metadata: map[string]any{"call_id": call.ID},
		Deadline: time.Now().Add(spec.Timeout).UTC()}
	if turnID == uuid.Nil {
		turnID = uuid.New()
	}
	traceparent := "00-" + hex.EncodeToString(turnID[:]) + "-" + hex.EncodeToString(id[:8]) + "-01"
	wait, cancel := rt.waiters.Expect(id)
	rt.poke() // the request is about to be stored
	return req, traceparent, ticket{spec: spec, deadline: req.Deadline, wait: wait}, cancel
}

// send writes a request to the outbox on its own (for calls that are not a turn's).
func (rt *remoteTools) send(ctx context.Context, req agate.ToolRequest, traceparent string) error {
	payload, err := json.Marshal(req)
	if err != nil {
		return err
	}
	err = rt.enqueue(ctx, agate.OutboxRecord{Topic: agate.TopicToolRequests, Key: req.RequestID.String(), Payload: payload,
		Headers: map[string]string{"traceparent": traceparent}})
	if err != nil {
		rt.log.Warn("enqueue a tool request", "tool", req.ToolName, "err", err)
		return err
	}
	rt.poke()
	return nil
}

// await waits for the result of a call sent to executors, until the request's deadline
// (the tool's timeout from when the request was made).
func (rt *remoteTools) await(ctx context.Context, tk ticket) turn.ToolOutcome {
	rt.poke() // the request is stored by now
	wctx, stop := context.WithDeadline(ctx, tk.deadline)
	defer stop()
	res, err := tk.wait(wctx)
	switch {
	case ctx.Err() != nil:
		return turn.ToolOutcome{Status: turn.ToolError, Text: "The call was cancelled."} // the turn ends without it
	case err != nil:
		return turn.ToolOutcome{Status: turn.ToolError, Text: fmt.Sprintf("The tool %q did not answer within %s.", tk.spec.Name, tk.spec.Timeout)}
	}
	status := turn.ToolOK
	if res.Status != turn.ToolOK {
		status = turn.ToolError
	}
	return turn.ToolOutcome{Status: status, Text: res.Text, Truncated: res.Truncated}
}
