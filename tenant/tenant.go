// Package tenant holds what the gateway knows about each tenant: its settings (system
// prompt, token budgets, rate limits, model routing, fail-open), read from a YAML file
// (conf/tenants.yaml) and reloaded when the file changes, and its daily token budgets,
// reserved before each model call and settled after it (Budgets).
package tenant

import (
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
)

// Settings are one tenant's settings: the file's defaults merged with the tenant's entry.
// Zero limits mean unlimited. The maps and slices of a Settings returned by Get are shared
// by every caller and must not be modified.
type Settings struct {
	// SystemPrompt starts every conversation of the tenant.
	SystemPrompt string
	// TokensPerDay is the tenant's daily token budget (UTC days); 0: unlimited.
	TokensPerDay int64
	// PersonaTokensPerDay holds daily budgets of personas, each spent within the tenant's;
	// a persona without an entry (or with 0) has no budget of its own.
	PersonaTokensPerDay map[string]int64
	// RequestsPerMinute and TokensPerMinute are rate limits; 0: unlimited.
	RequestsPerMinute int
	TokensPerMinute   int
	// Allow and Deny are model patterns (path.Match syntax, e.g. "openai/*", "gpt-4.1*").
	// A model matching a Deny pattern is refused; when Allow is not empty, a model must
	// match one of its patterns.
	Allow []string
	Deny  []string
	// FailOpen says what the rate limiter does when it cannot decide (Redis down and no
	// fallback): allow the request (true) or refuse it (false).
	FailOpen bool
}

// clone returns s with maps and slices of its own.
func (s Settings) clone() Settings {
	s.PersonaTokensPerDay = maps.Clone(s.PersonaTokensPerDay)
	s.Allow = slices.Clone(s.Allow)
	s.Deny = slices.Clone(s.Deny)
	return s
}

// Registry answers each tenant's settings. It is safe for concurrent use; Get is a map
// lookup on an immutable snapshot, which Reload and Run replace whole.
type Registry struct {
	path      string // "" for a Static registry
	log       *slog.Logger
	current   atomic.Pointer[snapshot]
	reloading sync.Mutex // one reload at a time, so that an older read never replaces a newer one
}

// snapshot is one version of the settings; never modified once stored.
type snapshot struct {
	defaults Settings
	tenants  map[string]Settings // defaults merged with each tenant's entry
	sum      [32]byte            // SHA-256 of the file it was read from
}

// Static returns a registry without a file: every tenant gets defaults (the gateway's
// settings from its environment). Its Run only waits for ctx to end.
func Static(defaults Settings) *Registry {
	r := &Registry{log: slog.New(slog.DiscardHandler)}
	r.current.Store(&snapshot{defaults: defaults.clone()})
	return r
}

// Get returns tenant's settings: the defaults merged with the tenant's entry, or the
// defaults alone for a tenant the file does not name (and for "").
func (r *Registry) Get(tenant string) Settings {
	s := r.current.Load()
	if t, ok := s.tenants[tenant]; ok {
		return t
	}
	return s.defaults
}

// Tenants returns the names of the tenants that have an entry, sorted.
func (r *Registry) Tenants() []string {
	return slices.Sorted(maps.Keys(r.current.Load().tenants))
}
