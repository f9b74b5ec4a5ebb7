package main

import (
	"cmp"
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/authn"
	"github.com/agate-gw/agate/httpapi"
	"github.com/agate-gw/agate/prompt"
	"github.com/agate-gw/agate/tenant"
	"github.com/agate-gw/agate/turn"
	goredis "github.com/redis/go-redis/v9"

	"github.com/agate-gw/agate/redis"
)

// access is the admission pipeline's parts (DESIGN.md §6): who calls (authn), what each
// tenant may spend and use (tenant settings and budgets).
type access struct {
	auth    *authn.Authenticator
	tenants *tenant.Registry
	budgets *tenant.Budgets
	jobs    []func(context.Context) error
}

// wireAccess builds authentication, tenant settings and budgets. rc is the Redis client
// when REDIS_URL is set (budgets are counted there, and in the store while it is down).
func wireAccess(cfg config, store turn.Store, rc *goredis.Client, log *slog.Logger) (*access, error) {
	a := &access{}
	var scopes []string
	if cfg.Profile == "dev" {
		scopes = []string{agate.ScopeAdmin, agate.ScopeOperator} // the dev profile's anonymous caller operates the gateway
	}
	var algs []string
	for _, s := range strings.Split(cfg.JWTAlgs, ",") {
		if s = strings.TrimSpace(s); s != "" {
			algs = append(algs, s)
		}
	}
	auth, err := authn.New(authn.Config{
		RequireAuth: cfg.RequireAuth, DefaultTenant: cfg.Tenant, AnonymousScopes: scopes,
		JWTSecret: cfg.JWTSecret, JWTPublicKey: cfg.JWTPublicKey, JWKSURL: cfg.JWKSURL,
		Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience, Leeway: cfg.JWTLeeway, Algorithms: algs,
	}, store, log)
	if err != nil {
		return nil, err
	}
	a.auth = auth
	a.jobs = append(a.jobs, auth.Run)

	if cfg.TenantConfig != "" {
		reg, err := tenant.Load(cfg.TenantConfig, log)
		if err != nil {
			return nil, err
		}
		a.tenants = reg
		a.jobs = append(a.jobs, reg.Run)
	} else {
		a.tenants = tenant.Static(tenant.Settings{SystemPrompt: cfg.SystemPrompt})
	}
	var counter tenant.Counter // nil: the store counts
	if rc != nil {
		// A slow answer is not an outage: falling back to the store's ledger splits the
		// counting (each side enforces the budget on its own reservations only), which a
		// loaded Redis answering in 60 ms rather than 50 ms must not cause. Budgets are on a
		// turn's path, not on a request's: a second is affordable.
		counter = redis.NewBudget(rc, store, redis.Config{Logger: log, Timeout: time.Second})
	}
	a.budgets = tenant.NewBudgets(a.tenants, counter, store, time.Now, log)
	return a, nil
}

// settings gives the API a tenant's settings.
func (a *access) settings(t string) httpapi.TenantSettings {
	s := a.tenants.Get(t)
	return httpapi.TenantSettings{RequestsPerMinute: s.RequestsPerMinute, Allow: s.Allow, Deny: s.Deny}
}

// systemPrompt gives the runner a tenant's system prompt.
func (a *access) systemPrompt(t string) string { return a.tenants.Get(t).SystemPrompt }

// admit is the runner's admission of a model call: the policy's model.use for every
// target the call may reach (the tenant's routing), then a reservation of the worst case
// (the prompt and the reply limit, which it sets when the tenant has a budget) on the
// tenant's budget, settled with what the call used.
func (a *access) admit(policy httpapi.Policy, targets func(string) []string, maxTokens int, log *slog.Logger) func(context.Context, agate.Turn, *agate.ModelRequest) (func(int64), error) {
	return func(ctx context.Context, t agate.Turn, req *agate.ModelRequest) (func(int64), error) {
		s := a.tenants.Get(t.Tenant)
		if policy != nil {
			for _, target := range targets(req.Model) {
				d, err := policy.Decide(ctx, agate.PolicyInput{
					Principal: agate.Principal{Tenant: t.Tenant}, Tenant: t.Tenant, Action: "model.use",
					Resource: map[string]any{"type": "model", "name": target},
					Context: map[string]any{"model": target, "persona": t.PersonaID, "routing": map[string]any{
						"allow": nonNil(s.Allow), "deny": nonNil(s.Deny)}},
					Usage: map[string]any{},
				})
				if err != nil {
					return nil, agate.Wrap(agate.EUnavailable, err, "The policy cannot be evaluated right now; retry shortly.")
				}
				if !d.Allow {
					return nil, agate.Errorf(agate.EPolicyDenied, "model.use refused: %s.", cmp.Or(d.Reason, "not allowed by policy"))
				}
			}
		}
		if limited(s, t.PersonaID) && req.MaxTokens <= 0 {
			req.MaxTokens = cmp.Or(maxTokens, defaultReplyTokens) // a reservation holds only for a bounded reply
		}
		n := int64(cmp.Or(req.MaxTokens, maxTokens, defaultReplyTokens))
		for _, m := range req.Messages {
			n += int64(prompt.Tokens(m.Content) + prompt.Tokens(m.ToolCallID))
			for _, c := range m.ToolCalls {
				n += int64(prompt.Tokens(c.Name) + prompt.Tokens(c.Arguments))
			}
		}
		for _, tool := range req.Tools {
			n += int64(prompt.Tokens(tool.Name) + prompt.Tokens(tool.Description) + prompt.Tokens(string(tool.Parameters)))
		}
		r, err := a.budgets.Reserve(ctx, t.Tenant, t.PersonaID, n)
		if err != nil {
			return nil, err
		}
		return func(used int64) {
			if err := a.budgets.Settle(context.WithoutCancel(ctx), r, used); err != nil {
				log.Warn("settle a token reservation", "err", err, "tenant", t.Tenant, "turn", t.ID)
			}
		}, nil
	}
}

// limited reports whether a call of the tenant's persona is on a budget.
func limited(s tenant.Settings, persona string) bool {
	return s.TokensPerDay > 0 || s.PersonaTokensPerDay[persona] > 0
}

// reserve is the API's budget for synchronous model calls.
func (a *access) reserve(log *slog.Logger) func(context.Context, string, string, int64) (func(int64), bool, error) {
	return func(ctx context.Context, t, persona string, n int64) (func(int64), bool, error) {
		r, err := a.budgets.Reserve(ctx, t, persona, n)
		if err != nil {
			return nil, false, err
		}
		return func(used int64) {
			if err := a.budgets.Settle(context.WithoutCancel(ctx), r, used); err != nil {
				log.Warn("settle a token reservation", "err", err, "tenant", t)
			}
		}, limited(a.tenants.Get(t), persona), nil
	}
}

// defaultReplyTokens is the reply size reserved when neither the request nor
// LLM_MAX_TOKENS bounds it.
const defaultReplyTokens = 4096

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
