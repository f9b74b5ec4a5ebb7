package httpapi

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/prompt"
	"github.com/google/uuid"
)

// Authorizer checks and records relationships (openfga): who may read and change which
// session (conf/authz.fga).
type Authorizer interface {
	// Check reports whether t holds, counting contextual tuples as if they were stored.
	// An error means it cannot tell (agate.EUnavailable): never a refusal.
	Check(ctx context.Context, t agate.Tuple, contextual ...agate.Tuple) (bool, error)
	// Write records tuples; writing one that exists is not an error.
	Write(ctx context.Context, tuples ...agate.Tuple) error
	// Delete removes tuples; removing one that does not exist is not an error.
	Delete(ctx context.Context, tuples ...agate.Tuple) error
	// Forget removes every tuple of object.
	Forget(ctx context.Context, object string) error
}

// Policy decides whether an action is allowed (opa). Any error is a refusal; its code
// says why (agate.EUnavailable when the policy engine cannot answer).
type Policy interface {
	Decide(ctx context.Context, in agate.PolicyInput) (agate.PolicyDecision, error)
}

// TenantSettings is what the API reads of a tenant's settings (tenant.Registry).
type TenantSettings struct {
	RequestsPerMinute int      // 0: Config.TenantLimit
	Allow, Deny       []string // model patterns of routing.allow / routing.deny
}

// Relations of conf/authz.fga that the API checks on sessions.
const (
	relViewer = "viewer" // may read the session and follow its stream
	relWriter = "writer" // may send into it, cancel its turn, delete it
)

// Object references of the authorization model. Ids are escaped (":", "#", "/" and
// spaces included) so that neither a tenant nor a subject can forge another's reference.
// UserRef is p's reference in the authorization model ("user:<tenant>/<subject>").
func UserRef(p agate.Principal) string { return userRef(p) }

// TenantRef is a tenant's reference in the authorization model ("tenant:<name>").
func TenantRef(tenant string) string { return tenantRef(tenant) }

func userRef(p agate.Principal) string {
	return "user:" + bounded(url.QueryEscape(p.Tenant)+"/"+url.QueryEscape(p.Subject))
}

// bounded keeps an id within OpenFGA's limits: a long one is replaced by its SHA-256.
func bounded(id string) string {
	if len(id) <= 200 {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256-" + hex.EncodeToString(sum[:])
}
func tenantRef(tenant string) string            { return "tenant:" + bounded(url.QueryEscape(tenant)) }
func sessionRef(id uuid.UUID) string            { return "session:" + id.String() }
func (s *Server) authzOn() bool                 { return s.authz != nil }
func principal(r *http.Request) agate.Principal { p, _ := agate.PrincipalFrom(r.Context()); return p }

// roles are the contextual tuples of what the principal's credentials say it is: an
// "admin" scope makes it an admin of its tenant for this request only, so a scope taken
// away is gone at once.
func roles(p agate.Principal) []agate.Tuple {
	if p.HasScope(agate.ScopeAdmin) {
		return []agate.Tuple{{User: userRef(p), Relation: "admin", Object: tenantRef(p.Tenant)}}
	}
	return nil
}

// created records a new session's relationships: the creator owns it, and it belongs to
// its tenant (whose admins may then read and change it).
func (s *Server) created(ctx context.Context, p agate.Principal, id uuid.UUID) error {
	if !s.authzOn() {
		return nil
	}
	return s.authz.Write(ctx,
		agate.Tuple{User: userRef(p), Relation: "owner", Object: sessionRef(id)},
		agate.Tuple{User: tenantRef(p.Tenant), Relation: "tenant", Object: sessionRef(id)})
}

// permit checks that the caller has relation (relViewer or relWriter) to sess, a session
// of its tenant. A session whose relationships were never recorded (created before
// authorization was configured) is its creator's: the tuples are written then.
func (s *Server) permit(r *http.Request, sess agate.Session, relation string) error {
	if !s.authzOn() {
		return nil
	}
	ok, err := s.allowed(r, sess.ID, relation)
	if err != nil || ok {
		return err
	}
	p := principal(r)
	if sess.Subject != "" && sess.Subject == p.Subject {
		if err := s.created(r.Context(), p, sess.ID); err != nil {
			s.logError(r, err)
		}
		return nil
	}
	verb := "read"
	if relation == relWriter {
		verb = "change"
	}
	return agate.Errorf(agate.EForbidden, "You may not %s this session.", verb)
}

// allowed asks the authorizer whether the caller has relation to the session id.
func (s *Server) allowed(r *http.Request, id uuid.UUID, relation string) (bool, error) {
	p := principal(r)
	ok, err := s.authz.Check(r.Context(), agate.Tuple{User: userRef(p), Relation: relation, Object: sessionRef(id)}, roles(p)...)
	if err != nil {
		if agate.ErrorCode(err) != agate.EUnavailable {
			return false, err // a tuple the model refuses: a bug, logged as one
		}
		return false, agate.Wrap(agate.EUnavailable, err, "Authorization cannot be checked right now; retry shortly.")
	}
	return ok, nil
}

// decide asks the policy about action; a refusal is agate.EPolicyDenied with its reason.
func (s *Server) decide(r *http.Request, action string, resource, context map[string]any) error {
	if s.policy == nil {
		return nil
	}
	p := principal(r)
	var t TenantSettings
	if s.tenants != nil {
		t = s.tenants(p.Tenant)
	}
	return Decide(r.Context(), s.policy, p, t, action, resource, context)
}

// Decide asks policy about p's action with the tenant's routing (t) in its context: nil
// for an allow, agate.EPolicyDenied with the policy's reason for a refusal, and for no
// decision agate.EUnavailable (the engine cannot be reached) or agate.EInternal (the policy
// fails to evaluate). The turn runner's admission asks it too.
func Decide(ctx context.Context, policy Policy, p agate.Principal, t TenantSettings, action string, resource, context map[string]any) error {
	if context == nil {
		context = map[string]any{}
	}
	context["routing"] = map[string]any{"allow": nonNil(t.Allow), "deny": nonNil(t.Deny)}
	d, err := policy.Decide(ctx, agate.PolicyInput{
		Principal: p, Tenant: p.Tenant, Action: action, Resource: resource, Context: context, Usage: map[string]any{},
	})
	if err != nil {
		if code := agate.ErrorCode(err); code == agate.EUnavailable || code == agate.EInternal {
			return err // unreachable: 503; a policy that fails to evaluate is a bug: 500
		}
		return agate.Wrap(agate.EUnavailable, err, "The policy cannot be evaluated right now; retry shortly.")
	}
	if !d.Allow {
		return agate.Errorf(agate.EPolicyDenied, "%s refused: %s.", action, cmp.Or(d.Reason, "not allowed by policy"))
	}
	return nil
}

// DecideModelUse asks policy's model.use about every provider/model target of a call
// (an alias's whole fallback chain, not the name asked for); the first refusal is the
// answer.
func DecideModelUse(ctx context.Context, policy Policy, p agate.Principal, t TenantSettings, targets []string, context map[string]any) error {
	for _, target := range targets {
		c := map[string]any{"model": target}
		for k, v := range context {
			c[k] = v
		}
		if err := Decide(ctx, policy, p, t, "model.use", map[string]any{"type": "model", "name": target}, c); err != nil {
			return err
		}
	}
	return nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// admitMessage checks that the caller may send in: the policy allows conversation.send,
// and the caller may write to in's session if it exists. It reports whether the message
// creates a session (whose relationships are to be recorded once it is accepted).
func (s *Server) admitMessage(r *http.Request, in agate.Inbound) (creates bool, err error) {
	creates = in.SessionID == uuid.Nil
	if !creates && s.authzOn() {
		// A writer's message needs no read of the session: only a refusal is looked into
		// (a session whose tuples are missing, or one the client is creating).
		ok, err := s.allowed(r, in.SessionID, relWriter)
		if err != nil {
			return false, err
		}
		if !ok {
			sess, err := s.store.Session(r.Context(), in.Tenant, in.SessionID)
			switch {
			case err == nil:
				if err := s.permit(r, sess, relWriter); err != nil {
					return false, err
				}
			case agate.ErrorCode(err) == agate.ESessionNotFound:
				creates = true // the client names a new session (another tenant's is refused by the store)
			default:
				return false, err
			}
		}
	}
	resource := map[string]any{"type": "session"}
	if in.SessionID != uuid.Nil {
		resource["id"] = in.SessionID.String()
	}
	return creates, s.decide(r, "conversation.send", resource, map[string]any{"persona": in.PersonaID})
}

// accepted records the relationships of a session the message created. The message is
// stored already, so a failure to record them is logged, not answered: the creator still
// owns the session (permit falls back on its subject and writes them then). A retry with
// an idempotency key the tenant used before gets the first outcome only if the caller may
// write to that session: idempotency keys are the tenant's, ownership is not.
func (s *Server) accepted(r *http.Request, creates bool, acc agate.Accepted) error {
	if !s.authzOn() {
		return nil
	}
	if acc.Duplicate {
		sess, err := s.store.Session(r.Context(), principal(r).Tenant, acc.Turn.SessionID)
		if err != nil {
			return err
		}
		return s.permit(r, sess, relWriter)
	}
	if !creates {
		return nil
	}
	// An id the client chose may have been a deleted session's: start from no relationships.
	if err := s.authz.Forget(r.Context(), sessionRef(acc.Turn.SessionID)); err != nil {
		s.logError(r, err)
	}
	if err := s.created(r.Context(), principal(r), acc.Turn.SessionID); err != nil {
		s.logError(r, err)
	}
	return nil
}

// handleShareSession makes {subject} of the caller's tenant a viewer of the session (PUT)
// or takes that back (DELETE); the caller must be able to change the session.
func (s *Server) handleShareSession(grant bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sess, err := s.session(r, relWriter)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		subject := r.PathValue("subject")
		if subject == "" || len(subject) > 256 || !printableASCII(subject) {
			s.fail(w, r, agate.Errorf(agate.EInvalid, "The subject must be 1 to 256 printable ASCII characters."))
			return
		}
		if !s.authzOn() {
			s.fail(w, r, agate.Errorf(agate.EForbidden, "Sessions cannot be shared: authorization is not configured."))
			return
		}
		viewer := agate.Principal{Tenant: principal(r).Tenant, Subject: subject}
		t := agate.Tuple{User: userRef(viewer), Relation: relViewer, Object: sessionRef(sess.ID)}
		if grant {
			err = s.authz.Write(r.Context(), t)
		} else {
			err = s.authz.Delete(r.Context(), t)
		}
		if err != nil {
			s.fail(w, r, agate.Wrap(agate.EUnavailable, err, "Authorization cannot be changed right now; retry shortly."))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// reserve reserves the most tokens req may use on the caller's budget (Deps.Budget),
// bounding the reply (MaxTokens) when the caller is on a budget and req sets none;
// settle is to be called once with the tokens used.
func (s *Server) reserve(r *http.Request, req *agate.ModelRequest) (settle func(used int64), err error) {
	if s.budget == nil {
		return func(int64) {}, nil
	}
	p := principal(r)
	settle, limited, err := s.budget(r.Context(), p.Tenant, "", prompt.Worst(*req, prompt.DefaultReplyTokens))
	if err != nil {
		return nil, err
	}
	if limited && req.MaxTokens <= 0 {
		req.MaxTokens = prompt.DefaultReplyTokens
	}
	return settle, nil
}

// decideModel asks the policy's model.use about every provider/model target a request for
// model would reach (an alias's whole fallback chain), not about the name the client sent.
func (s *Server) decideModel(r *http.Request, model string) error {
	if s.policy == nil {
		return nil
	}
	targets := []string{cmp.Or(strings.TrimSpace(model), "default")}
	if m, ok := s.model.(interface{ Targets(string) []string }); ok {
		targets = m.Targets(model)
	}
	p := principal(r)
	var t TenantSettings
	if s.tenants != nil {
		t = s.tenants(p.Tenant)
	}
	return DecideModelUse(r.Context(), s.policy, p, t, targets, nil)
}
