package tool

import (
	"context"
	"net/netip"
)

// WithLookup returns cfg with http_fetch resolving host names through lookup, so that tests
// can make a name resolve to any address, and differently each time (DNS rebinding).
func WithLookup(cfg BuiltinConfig, lookup func(ctx context.Context, host string) ([]netip.Addr, error)) BuiltinConfig {
	cfg.lookup = lookup
	return cfg
}
