package tool

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// maxRedirects is how many redirects http_fetch follows; each target is checked like the
// first URL (scheme, allow list, addresses) before it is requested, and again when dialled.
const maxRedirects = 3

// fetcher is the http_fetch tool.
//
// Server-side request forgery is stopped at two points: before a request (and before each
// redirect) the URL's host must be allowed and resolve only to public addresses, which gives
// the model a clear refusal; and when a connection is made, a net.Dialer Control function
// checks the address actually connected to, so a name that resolves differently the second
// time (DNS rebinding) gets nowhere. No proxy from the environment is used: it would make the
// dialled address the proxy's. The client is built here and cannot be replaced for the same
// reason.
type fetcher struct {
	allow    []allowRule
	allowErr error // the config's allow list is invalid: refuse everything
	maxBytes int64
	timeout  time.Duration
	lookup   func(ctx context.Context, host string) ([]netip.Addr, error)
	client   *http.Client
}

func newFetcher(cfg BuiltinConfig) *fetcher {
	f := &fetcher{maxBytes: cfg.FetchMaxBytes, timeout: cfg.FetchTimeout, lookup: cfg.lookup}
	f.allow, f.allowErr = parseAllow(cfg.FetchAllow)
	if f.maxBytes <= 0 {
		f.maxBytes = DefaultFetchMaxBytes
	}
	if f.timeout <= 0 {
		f.timeout = DefaultFetchTimeout
	}
	if f.lookup == nil {
		f.lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	f.client = &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil,
			DialContext:            f.dial,
			ForceAttemptHTTP2:      true,
			DisableKeepAlives:      true, // no idle connections to own; fetches are rare
			TLSHandshakeTimeout:    10 * time.Second,
			MaxResponseHeaderBytes: 64 << 10,
		},
		CheckRedirect: f.checkRedirect,
	}
	return f
}

// refusal is an error http_fetch shows the model as it is.
type refusal struct{ msg string }

func (r *refusal) Error() string { return r.msg }

func refusef(format string, args ...any) error { return &refusal{fmt.Sprintf(format, args...)} }

func (f *fetcher) fetch(ctx context.Context, args json.RawMessage) (string, error) {
	var a struct {
		URL string `json:"url"`
	}
	if err := json.Unmarshal(args, &a); err != nil {
		return "", fmt.Errorf("invalid arguments: %v", err)
	}
	u, err := url.Parse(a.URL)
	if err != nil {
		return "", fmt.Errorf("invalid url: %v", err)
	}
	if err := f.check(ctx, u); err != nil {
		return "", err
	}

	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", fmt.Errorf("invalid url: %v", err)
	}
	req.Header.Set("User-Agent", "agate-http-fetch/1")
	req.Header.Set("Accept", "text/*, application/json, application/xml;q=0.9, */*;q=0.1")
	resp, err := f.client.Do(req)
	if err != nil {
		return "", f.explain(ctx, err)
	}
	defer resp.Body.Close()

	body := bufio.NewReader(resp.Body)
	ctype := resp.Header.Get("Content-Type")
	if ctype == "" {
		head, _ := body.Peek(512)
		ctype = http.DetectContentType(head)
	}
	if !textual(ctype) {
		return "", refusef("refusing binary content (%s): http_fetch returns text only", ctype)
	}
	data, err := io.ReadAll(io.LimitReader(body, f.maxBytes+1))
	if err != nil {
		return "", f.explain(ctx, fmt.Errorf("reading the body: %w", err))
	}
	text := string(data)
	if int64(len(data)) > f.maxBytes {
		n := int(f.maxBytes)
		for i := 0; i < utf8.UTFMax-1 && n > 0 && !utf8.RuneStart(data[n]); i++ {
			n--
		}
		if resp.ContentLength > 0 {
			text = fmt.Sprintf("%s\n…[truncated: %d of %d bytes shown]", data[:n], n, resp.ContentLength)
		} else {
			text = fmt.Sprintf("%s\n…[truncated: first %d bytes shown]", data[:n], n)
		}
	}
	return fmt.Sprintf("HTTP %d\n%s\n\n%s", resp.StatusCode, ctype, strings.ToValidUTF8(text, "\uFFFD")), nil
}

// explain turns a client error into the message the model sees.
func (f *fetcher) explain(ctx context.Context, err error) error {
	var r *refusal
	switch {
	case errors.As(err, &r):
		return r
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("fetch timed out after %s", f.timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("fetch failed: %v", err)
}

// check refuses u unless it is an http(s) URL without credentials whose host is allowed and,
// unless it is an IP address listed exactly, resolves only to public addresses.
func (f *fetcher) check(ctx context.Context, u *url.URL) error {
	if f.allowErr != nil {
		return refusef("http_fetch is misconfigured (%v); it cannot fetch anything", f.allowErr)
	}
	if len(f.allow) == 0 {
		return refusef("http_fetch is not configured: no hosts are allowed")
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return refusef("only http and https URLs can be fetched, not %q", u.Scheme)
	}
	if u.User != nil {
		return refusef("URLs with credentials are not allowed")
	}
	host := normalizeHost(u.Hostname())
	if host == "" {
		return refusef("the URL has no host")
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[scheme]
	}
	exact, ok := match(f.allow, host, port)
	if !ok {
		return refusef("host %q is not in the http_fetch allow list", net.JoinHostPort(host, port))
	}
	if exact {
		return nil
	}
	addrs, err := f.resolve(ctx, host)
	if err != nil {
		return refusef("cannot resolve %q: %v", host, err)
	}
	for _, a := range addrs {
		if why := nonPublic(a); why != "" {
			return refusef("refusing %q: it resolves to %s, a %s address", host, a, why)
		}
	}
	return nil
}

func (f *fetcher) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > maxRedirects {
		return refusef("stopped after %d redirects", maxRedirects)
	}
	if err := f.check(req.Context(), req.URL); err != nil {
		return refusef("redirect to %s refused: %v", req.URL.Redacted(), err)
	}
	return nil
}

func (f *fetcher) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	addrs, err := f.lookup(ctx, host)
	if err == nil && len(addrs) == 0 {
		err = errors.New("no addresses")
	}
	return addrs, err
}

// dial connects to addr ("host:port" of the request URL) after checking the host against
// the allow list again; the Control function then refuses a non-public address unless the
// host is an IP address listed exactly.
func (f *fetcher) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	host = normalizeHost(host)
	exact, ok := match(f.allow, host, port)
	if !ok {
		return nil, refusef("host %q is not in the http_fetch allow list", net.JoinHostPort(host, port))
	}
	addrs, err := f.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return refusef("refusing to connect to %q: not an IP address", address)
		}
		if why := nonPublic(ap.Addr()); why != "" && !exact {
			return refusef("refusing to connect to %s for %q: a %s address", ap.Addr(), host, why)
		}
		return nil
	}}
	var first error
	for _, a := range addrs {
		conn, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return conn, nil
		}
		var r *refusal
		if first == nil || errors.As(err, &r) {
			first = err
		}
	}
	return nil, first
}

// nonPublic returns why a is not a public unicast address ("loopback", "private", …), or "".
func nonPublic(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return "invalid"
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case a.IsUnspecified():
		return "unspecified"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "multicast"
	}
	for _, p := range reserved {
		if p.Contains(a) {
			return "reserved"
		}
	}
	return ""
}

// reserved are further ranges that are not the public internet.
var reserved = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),      // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),       // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),      // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),        // reserved, broadcast
	netip.MustParsePrefix("64:ff9b::/96"),       // NAT64: may reach private IPv4
	netip.MustParsePrefix("64:ff9b:1::/48"),     // local-use NAT64
	netip.MustParsePrefix("::/96"),              // IPv4-compatible (deprecated)
	netip.MustParsePrefix("2001:db8::/32"),      // documentation
	netip.MustParsePrefix("100::/64"),           // discard-only
	netip.MustParsePrefix("2002::/16"),          // 6to4: may embed private IPv4
	netip.MustParsePrefix("2001::/32"),          // Teredo
	netip.MustParsePrefix("255.255.255.255/32"), // broadcast
}

// textual reports whether a Content-Type value is text that http_fetch returns.
func textual(ctype string) bool {
	mt, _, err := mime.ParseMediaType(ctype)
	if err != nil {
		return false
	}
	switch {
	case strings.HasPrefix(mt, "text/"),
		strings.HasSuffix(mt, "+json"), strings.HasSuffix(mt, "+xml"):
		return true
	}
	switch mt {
	case "application/json", "application/xml", "application/javascript", "application/ecmascript",
		"application/x-javascript", "application/yaml", "application/x-yaml", "application/toml",
		"application/x-ndjson", "application/x-www-form-urlencoded", "application/csv",
		"application/sql", "application/graphql":
		return true
	}
	return false
}

// allowRule is one FetchAllow entry.
type allowRule struct {
	host     string // lower case, no trailing dot; for a wildcard the domain after "*."
	wildcard bool
	port     string // "" for any
}

func parseAllow(entries []string) ([]allowRule, error) {
	rules := make([]allowRule, 0, len(entries))
	for _, e := range entries {
		r, err := parseAllowEntry(strings.TrimSpace(e))
		if err != nil {
			return nil, fmt.Errorf("fetch allow entry %q: %v", e, err)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

func parseAllowEntry(e string) (allowRule, error) {
	var r allowRule
	host := e
	switch {
	case e == "":
		return r, errors.New("empty")
	case strings.Contains(e, "/"):
		return r, errors.New(`want a host name or host:port, not a URL`)
	case strings.HasPrefix(e, "["):
		h, p, err := net.SplitHostPort(e)
		if err != nil {
			if !strings.HasSuffix(e, "]") {
				return r, err
			}
			h, p = e[1:len(e)-1], ""
		}
		host, r.port = h, p
	case strings.Count(e, ":") == 1:
		h, p, err := net.SplitHostPort(e)
		if err != nil {
			return r, err
		}
		host, r.port = h, p
	}
	if r.port != "" {
		if n, err := strconv.Atoi(r.port); err != nil || n < 1 || n > 65535 {
			return r, fmt.Errorf("invalid port %q", r.port)
		}
	}
	if d, ok := strings.CutPrefix(host, "*."); ok {
		r.wildcard, host = true, d
	}
	host = normalizeHost(host)
	if host == "" || strings.ContainsAny(host, "* ") {
		return r, errors.New(`want a host name, an IP address or "*.domain"`)
	}
	if a, err := netip.ParseAddr(host); err == nil && r.wildcard {
		return r, fmt.Errorf("a wildcard cannot apply to the IP address %s", a)
	}
	r.host = host
	return r, nil
}

// normalizeHost lower-cases a host name and drops a trailing dot; IP addresses are written
// in their canonical form.
func normalizeHost(h string) string {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.String()
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// match reports whether host:port is allowed, and whether by an entry that lifts the
// public-address rule: only an IP address listed exactly ("127.0.0.1:8080") does; a host
// name, even listed exactly, may resolve (or be rebound) to any address, so its addresses
// are checked.
func match(rules []allowRule, host, port string) (exact, ok bool) {
	host = normalizeHost(host)
	for _, r := range rules {
		if r.port != "" && r.port != port {
			continue
		}
		switch {
		case !r.wildcard && host == r.host:
			_, err := netip.ParseAddr(host)
			return err == nil, true
		case r.wildcard && strings.HasSuffix(host, "."+r.host):
			if _, err := netip.ParseAddr(host); err != nil {
				ok = true
			}
		}
	}
	return false, ok
}
