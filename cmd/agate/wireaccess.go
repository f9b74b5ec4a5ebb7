package main

import (
	"cmp"
	"context"
	"fmt"
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
	ledger  turn.Ledger // the store: per-minute token counters
	now     func() time.Time
	jobs    []func(context.Context) error
}

// wireAccess builds authentication, tenant settings and budgets. rc is the Redis client
// when REDIS_URL is set (budgets are counted there, and in the store while it is down).
func wireAccess(cfg config, store turn.Store, rc *goredis.Client, log *slog.Logger) (*access, error) {
	a := &access{ledger: store, now: time.Now}
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
		counter = redis.NewBudget(rc, store, redis.Config{Logger: log})
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
			routing := httpapi.TenantSettings{Allow: s.Allow, Deny: s.Deny}
			err := httpapi.DecideModelUse(ctx, policy, agate.Principal{Tenant: t.Tenant}, routing, targets(req.Model),
				map[string]any{"persona": t.PersonaID})
			if err != nil {
				return nil, err
			}
		}
		if limited(s, t.PersonaID) && req.MaxTokens <= 0 {
			req.MaxTokens = cmp.Or(maxTokens, prompt.DefaultReplyTokens) // a reservation holds only for a bounded reply
		}
		n := prompt.Worst(*req, cmp.Or(maxTokens, prompt.DefaultReplyTokens))
		return a.take(ctx, t.Tenant, t.PersonaID, n, s, log)
	}
}

// take reserves n tokens on the tenant's per-minute rate (tokens_per_minute) and daily
// budget, and returns what settles both.
func (a *access) take(ctx context.Context, tenantName, persona string, n int64, s tenant.Settings, log *slog.Logger) (func(int64), error) {
	perMinute, err := a.perMinute(ctx, tenantName, n, s.TokensPerMinute)
	if err != nil {
		return nil, err
	}
	r, err := a.budgets.Reserve(ctx, tenantName, persona, n)
	if err != nil {
		perMinute(0)
		return nil, err
	}
	return func(used int64) {
		perMinute(used)
		if err := a.budgets.Settle(context.WithoutCancel(ctx), r, used); err != nil {
			log.Warn("settle a token reservation", "err", err, "tenant", tenantName)
		}
	}, nil
}

// perMinute reserves n tokens of the tenant's tokens_per_minute (0: no limit) on the
// store's counter of the current minute, shared by every replica: over it, the call is
// refused with agate.ERateLimited until the next minute.
func (a *access) perMinute(ctx context.Context, tenantName string, n int64, limit int) (func(int64), error) {
	if limit <= 0 {
		return func(int64) {}, nil
	}
	now := a.now().UTC()
	key := agate.BudgetKey{Tenant: tenantName, Day: now.Format("2006-01-02T15:04")} // a minute, not a day
	ok, err := a.ledger.ReserveTokens(ctx, key, n, int64(limit))
	if err != nil {
		return nil, err
	}
	if !ok {
		wait := now.Truncate(time.Minute).Add(time.Minute).Sub(now)
		return nil, &agate.Error{Code: agate.ERateLimited, RetryAfter: wait,
			Message: fmt.Sprintf("Tenant %q is over its rate of %d tokens per minute; this call may use up to %d. Retry in %s.", tenantName, limit, n, wait.Round(time.Second))}
	}
	return func(used int64) {
		_ = a.ledger.SettleTokens(context.WithoutCancel(ctx), key, n, used)
	}, nil
}

// limited reports whether a call of the tenant's persona is on a budget.
func limited(s tenant.Settings, persona string) bool {
	return s.TokensPerDay > 0 || s.PersonaTokensPerDay[persona] > 0 || s.TokensPerMinute > 0
}

// reserve is the API's budget for synchronous model calls.
func (a *access) reserve(log *slog.Logger) func(context.Context, string, string, int64) (func(int64), bool, error) {
	return func(ctx context.Context, t, persona string, n int64) (func(int64), bool, error) {
		s := a.tenants.Get(t)
		settle, err := a.take(ctx, t, persona, n, s, log)
		if err != nil {
			return nil, false, err
		}
		return settle, limited(s, persona), nil
	}
}
