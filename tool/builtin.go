package tool

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"
	_ "time/tzdata" // timestamp knows every IANA zone even where the system has no zoneinfo
)

// Defaults of BuiltinConfig.
const (
	DefaultFetchMaxBytes = 256 << 10
	DefaultFetchTimeout  = 10 * time.Second
)

// BuiltinConfig tunes the built-in tools. The zero value is usable: http_fetch then refuses
// every URL, saying that it is not configured.
type BuiltinConfig struct {
	// FetchAllow lists the hosts http_fetch may GET: "example.com" (any port),
	// "example.com:8443" (that port only), "*.example.com" (any subdomain, not example.com
	// itself; a port may follow), IP addresses ("10.0.0.7", "[::1]:8080"). Loopback,
	// private, link-local, unspecified, multicast and other non-public addresses are refused,
	// also when a host resolves to one (or is rebound to one), unless that IP address itself
	// is listed exactly. Empty: http_fetch refuses everything.
	FetchAllow []string
	// FetchMaxBytes bounds the response body http_fetch returns; the rest is cut and marked.
	// 0 means DefaultFetchMaxBytes.
	FetchMaxBytes int64
	// FetchTimeout bounds one http_fetch call, redirects and body included.
	// 0 means DefaultFetchTimeout. The tool's catalogue timeout applies as well.
	FetchTimeout time.Duration
	// Now is the clock of timestamp; nil means time.Now.
	Now func() time.Time

	// lookup resolves host names for http_fetch; nil uses net.DefaultResolver. Tests set it
	// to simulate DNS, DNS rebinding included.
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
}

// Validate returns an error naming the first invalid FetchAllow entry, or a negative limit.
// Builtins accepts an invalid config, but its http_fetch then refuses every URL; call
// Validate where the config is read, to fail at start instead.
func (c BuiltinConfig) Validate() error {
	if c.FetchMaxBytes < 0 {
		return fmt.Errorf("fetch max bytes %d: want 0 (default) or more", c.FetchMaxBytes)
	}
	if c.FetchTimeout < 0 {
		return fmt.Errorf("fetch timeout %s: want 0 (default) or more", c.FetchTimeout)
	}
	_, err := parseAllow(c.FetchAllow)
	return err
}

// Builtins returns the in-process tools by name: echo, timestamp and http_fetch.
func Builtins(cfg BuiltinConfig) map[string]Func {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return map[string]Func{
		"echo":       echo,
		"timestamp":  func(ctx context.Context, args json.RawMessage) (string, error) { return timestamp(now, args) },
		"http_fetch": newFetcher(cfg).fetch,
	}
}

// echo returns its text argument.
func echo(_ context.Context, args json.RawMessage) (string, error) {
	var a struct {
		Text string `json:"text"`
	}
	if err := json.Unmarshal(args, &a); err != nil {
		return "", fmt.Errorf("invalid arguments: %v", err)
	}
	return a.Text, nil
}

// timestamp returns the time in RFC 3339 format, in UTC or the IANA zone of the timezone
// argument.
func timestamp(now func() time.Time, args json.RawMessage) (string, error) {
	var a struct {
		Timezone string `json:"timezone"`
	}
	if err := json.Unmarshal(args, &a); err != nil {
		return "", fmt.Errorf("invalid arguments: %v", err)
	}
	loc := time.UTC
	if a.Timezone != "" {
		var err error
		// "Local" is the server's zone, not an IANA name: it would leak the host's setup.
		if loc, err = time.LoadLocation(a.Timezone); err != nil || a.Timezone == "Local" {
			return "", fmt.Errorf("unknown time zone %q: want an IANA name such as \"Europe/Paris\", or none for UTC", a.Timezone)
		}
	}
	return now().In(loc).Format(time.RFC3339), nil
}
