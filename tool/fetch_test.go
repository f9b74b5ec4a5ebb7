package tool_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/tool"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// server is an httptest server on 127.0.0.1 that counts the requests it gets.
type server struct {
	*httptest.Server
	hits atomic.Int64
}

func newServer(t *testing.T, h http.HandlerFunc) *server {
	t.Helper()
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

// hostPort is the server's "127.0.0.1:<port>".
func (s *server) hostPort() string { return strings.TrimPrefix(s.URL, "http://") }

func (s *server) port() string { _, p, _ := net.SplitHostPort(s.hostPort()); return p }

func textHandler(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, body)
	}
}

// names resolves host names of the test's own making; every other name does not exist.
type names map[string][]netip.Addr

func (n names) lookup(_ context.Context, host string) ([]netip.Addr, error) {
	if a, ok := n[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// fetch runs the http_fetch built-in with cfg; names resolve through lookup when not nil.
func fetch(t *testing.T, cfg tool.BuiltinConfig, lookup func(context.Context, string) ([]netip.Addr, error), rawURL string) (string, error) {
	t.Helper()
	if lookup != nil {
		cfg = tool.WithLookup(cfg, lookup)
	}
	args, _ := json.Marshal(map[string]string{"url": rawURL})
	return tool.Builtins(cfg)["http_fetch"](context.Background(), args)
}

func wantRefusal(t *testing.T, text string, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("fetched %q, want an error containing %q", text, want)
	}
	if !contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
}

func TestFetchRefusesEverythingWhenNotConfigured(t *testing.T) {
	s := newServer(t, textHandler("hello"))
	text, err := fetch(t, tool.BuiltinConfig{}, nil, s.URL)
	wantRefusal(t, text, err, "http_fetch is not configured: no hosts are allowed")
	text, err = fetch(t, tool.BuiltinConfig{FetchAllow: []string{"https://example.com"}}, nil, s.URL)
	wantRefusal(t, text, err, `http_fetch is misconfigured (fetch allow entry "https://example.com"`)
	if s.hits.Load() != 0 {
		t.Errorf("the server got %d requests", s.hits.Load())
	}
}

// TestFetchOfLoopbackNeedsAnExactAllowEntry: only an IP address listed exactly may be a
// non-public one.
func TestFetchOfLoopbackNeedsAnExactAllowEntry(t *testing.T) {
	s := newServer(t, textHandler("hello"))
	local := names{"local.example.test": addrs("127.0.0.1")}
	tests := []struct {
		name  string
		allow []string
		url   string
		want  string // error substring; "" to fetch
	}{
		{"by a wildcard entry", []string{"*.example.test"}, "http://local.example.test:" + s.port() + "/",
			`refusing "local.example.test": it resolves to 127.0.0.1, a loopback address`},
		{"by an exact entry for another port", []string{"127.0.0.1:1"}, s.URL,
			`host "127.0.0.1:` + s.port() + `" is not in the http_fetch allow list`},
		{"by an exact entry", []string{"127.0.0.1:" + s.port()}, s.URL, ""},
		{"by an exact entry without a port", []string{"127.0.0.1"}, s.URL + "/page", ""},
		// A name may resolve or be rebound anywhere: listing it does not lift the rule.
		{"by an exact name", []string{"LOCAL.example.test."}, "http://local.example.test:" + s.port() + "/",
			`refusing "local.example.test": it resolves to 127.0.0.1, a loopback address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text, err := fetch(t, tool.BuiltinConfig{FetchAllow: tt.allow}, local.lookup, tt.url)
			if tt.want != "" {
				wantRefusal(t, text, err, tt.want)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := "HTTP 200\ntext/plain; charset=utf-8\n\nhello"; text != want {
				t.Errorf("text = %q, want %q", text, want)
			}
		})
	}
}

func TestFetchRefusesNonPublicAddresses(t *testing.T) {
	s := newServer(t, textHandler("secret"))
	for _, tc := range []struct{ addr, why string }{
		{"127.0.0.2", "loopback"},
		{"::1", "loopback"},
		{"10.1.2.3", "private"},
		{"172.16.0.1", "private"},
		{"192.168.1.1", "private"},
		{"fd00::1", "private"},
		{"169.254.169.254", "link-local"},
		{"fe80::1", "link-local"},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"224.0.0.1", "multicast"},
		{"ff02::1", "multicast"},
		{"100.64.0.1", "reserved"},
		{"::ffff:10.0.0.1", "private"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			lookup := names{"inside.example.test": addrs("93.184.216.34", tc.addr)}.lookup
			text, err := fetch(t, tool.BuiltinConfig{FetchAllow: []string{"*.example.test"}}, lookup,
				"http://inside.example.test:"+s.port()+"/")
			wantRefusal(t, text, err, fmt.Sprintf("a %s address", tc.why))

			// An IP address in the URL, allowed by a wildcard-free entry for another host.
			ip := netip.MustParseAddr(tc.addr)
			text, err = fetch(t, tool.BuiltinConfig{FetchAllow: []string{"example.test"}}, lookup,
				"http://"+net.JoinHostPort(ip.String(), s.port())+"/")
			wantRefusal(t, text, err, "is not in the http_fetch allow list")
		})
	}
	if s.hits.Load() != 0 {
		t.Errorf("the server got %d requests", s.hits.Load())
	}
}

func TestFetchRefusesHostsNotAllowed(t *testing.T) {
	lookup := names{
		"example.com": addrs("93.184.216.34"), "evil.com": addrs("93.184.216.35"),
		"example.com.evil.com": addrs("93.184.216.35"), "api.example.com": addrs("93.184.216.36"),
	}.lookup
	for _, tc := range []struct{ allow, url, want string }{
		{"example.com", "https://evil.com/", `host "evil.com:443" is not in the http_fetch allow list`},
		{"example.com", "https://example.com.evil.com/", `host "example.com.evil.com:443" is not in`},
		{"example.com", "https://api.example.com/", `host "api.example.com:443" is not in`},
		{"example.com:443", "http://example.com/", `host "example.com:80" is not in`},
		{"*.example.com", "https://example.com/", `host "example.com:443" is not in`},
		{"*.example.com", "https://evil.com/?q=api.example.com", `host "evil.com:443" is not in`},
	} {
		text, err := fetch(t, tool.BuiltinConfig{FetchAllow: []string{tc.allow}}, lookup, tc.url)
		wantRefusal(t, text, err, tc.want)
	}
}

func TestFetchRefusesOtherSchemesAndCredentials(t *testing.T) {
	cfg := tool.BuiltinConfig{FetchAllow: []string{"example.com", "localhost"}}
	for _, tc := range []struct{ url, want string }{
		{"ftp://example.com/file.txt", `only http and https URLs can be fetched, not "ftp"`},
		{"file:///etc/passwd", `only http and https URLs can be fetched, not "file"`},
		{"gopher://example.com/", `only http and https URLs can be fetched, not "gopher"`},
		{"example.com/page", `only http and https URLs can be fetched, not ""`},
		{"https://user:pass@example.com/", "URLs with credentials are not allowed"},
		{"http:///path", "the URL has no host"},
	} {
		text, err := fetch(t, cfg, names{}.lookup, tc.url)
		wantRefusal(t, text, err, tc.want)
	}
}

func TestFetchFollowsOnlyAllowedRedirects(t *testing.T) {
	inner := newServer(t, textHandler("internal"))
	var outer *server
	outer = newServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/to-private-name":
			http.Redirect(w, r, "http://internal.example.test:"+inner.port()+"/", http.StatusFound)
		case "/to-unlisted":
			http.Redirect(w, r, inner.URL+"/", http.StatusFound)
		case "/to-file":
			http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		case "/hop":
			http.Redirect(w, r, "/final", http.StatusMovedPermanently)
		case "/final":
			textHandler("arrived")(w, r)
		}
	})
	cfg := tool.BuiltinConfig{FetchAllow: []string{outer.hostPort(), "*.example.test"}}
	lookup := names{"internal.example.test": addrs("127.0.0.1")}.lookup
	for _, tc := range []struct{ path, want string }{
		{"/to-private-name", `redirect to http://internal.example.test:` + inner.port() +
			`/ refused: refusing "internal.example.test": it resolves to 127.0.0.1, a loopback address`},
		{"/to-unlisted", `redirect to ` + inner.URL + `/ refused: host "` + inner.hostPort() + `" is not in the http_fetch allow list`},
		{"/to-file", `redirect to file:///etc/passwd refused: only http and https URLs can be fetched`},
		{"/loop", "stopped after 3 redirects"},
	} {
		text, err := fetch(t, cfg, lookup, outer.URL+tc.path)
		wantRefusal(t, text, err, tc.want)
	}
	if inner.hits.Load() != 0 {
		t.Errorf("the internal server got %d requests", inner.hits.Load())
	}
	text, err := fetch(t, cfg, lookup, outer.URL+"/hop")
	if err != nil || text != "HTTP 200\ntext/plain; charset=utf-8\n\narrived" {
		t.Errorf("allowed redirect: %q, %v", text, err)
	}
}

// A name that resolves to a public address when checked and to loopback when dialled
// (DNS rebinding) is refused by the check at dial time.
func TestFetchDialTimeCheckDefeatsDNSRebinding(t *testing.T) {
	s := newServer(t, textHandler("secret"))
	var mu sync.Mutex
	var lookups int
	lookup := func(_ context.Context, host string) ([]netip.Addr, error) {
		mu.Lock()
		defer mu.Unlock()
		lookups++
		if lookups == 1 {
			return addrs("93.184.216.34"), nil
		}
		return addrs("127.0.0.1"), nil
	}
	text, err := fetch(t, tool.BuiltinConfig{FetchAllow: []string{"*.example.test"}}, lookup,
		"http://rebind.example.test:"+s.port()+"/")
	wantRefusal(t, text, err, `refusing to connect to 127.0.0.1 for "rebind.example.test": a loopback address`)
	if lookups < 2 {
		t.Errorf("%d lookups: the dial did not resolve the name again", lookups)
	}
	if s.hits.Load() != 0 {
		t.Errorf("the server got %d requests", s.hits.Load())
	}
}

func TestFetchLimitsTheBody(t *testing.T) {
	body := "aé" + strings.Repeat("x", 100) // byte 2 is inside the é
	chunked := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.(http.Flusher).Flush() // no Content-Length
		fmt.Fprint(w, body)
	})
	sized := newServer(t, textHandler(body))
	cfg := tool.BuiltinConfig{FetchAllow: []string{chunked.hostPort(), sized.hostPort()}, FetchMaxBytes: 2}
	text, err := fetch(t, cfg, nil, chunked.URL)
	if want := "HTTP 200\ntext/plain\n\na\n…[truncated: first 1 bytes shown]"; err != nil || text != want {
		t.Errorf("chunked: %q, %v\nwant %q", text, err, want)
	}
	text, err = fetch(t, cfg, nil, sized.URL)
	if want := "HTTP 200\ntext/plain; charset=utf-8\n\na\n…[truncated: 1 of 103 bytes shown]"; err != nil || text != want {
		t.Errorf("sized: %q, %v\nwant %q", text, err, want)
	}
	cfg.FetchMaxBytes = 0 // default 256 KiB
	text, err = fetch(t, cfg, nil, sized.URL)
	if want := "HTTP 200\ntext/plain; charset=utf-8\n\n" + body; err != nil || text != want {
		t.Errorf("default limit: %q, %v", text, err)
	}
}

func TestFetchTimesOut(t *testing.T) {
	release := make(chan struct{})
	s := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // before s.Close, which waits for the handler
	text, err := fetch(t, tool.BuiltinConfig{FetchAllow: []string{s.hostPort()}, FetchTimeout: 30 * time.Millisecond}, nil, s.URL)
	wantRefusal(t, text, err, "fetch timed out after 30ms")
}

func TestFetchRefusesBinaryContent(t *testing.T) {
	s := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/png":
			w.Header().Set("Content-Type", "image/png")
			w.Write([]byte("\x89PNG\r\n\x1a\n...."))
		case "/untyped-binary":
			w.Header()["Content-Type"] = nil // no sniffing by the server
			w.Write([]byte{0, 1, 2, 3, 0xff, 0xfe})
		case "/untyped-text":
			w.Header()["Content-Type"] = nil
			w.Write([]byte("just words"))
		case "/json":
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"title":"not here"}`))
		}
	})
	cfg := tool.BuiltinConfig{FetchAllow: []string{s.hostPort()}}
	text, err := fetch(t, cfg, nil, s.URL+"/png")
	wantRefusal(t, text, err, "refusing binary content (image/png): http_fetch returns text only")
	text, err = fetch(t, cfg, nil, s.URL+"/untyped-binary")
	wantRefusal(t, text, err, "refusing binary content (application/octet-stream)")
	for path, want := range map[string]string{
		"/untyped-text": "HTTP 200\ntext/plain; charset=utf-8\n\njust words",
		"/json":         "HTTP 404\napplication/problem+json\n\n" + `{"title":"not here"}`,
	} {
		text, err := fetch(t, cfg, nil, s.URL+path)
		if err != nil || text != want {
			t.Errorf("%s: %q, %v\nwant %q", path, text, err, want)
		}
	}
}

// Through the registry, a refusal is an error result the model can read.
func TestFetchRefusalIsAnErrorResult(t *testing.T) {
	r := shipped(t, tool.BuiltinConfig{FetchAllow: []string{"example.com"}})
	got, err := r.Run(context.Background(), "http_fetch", json.RawMessage(`{"url":"https://169.254.169.254/latest/meta-data/"}`))
	if err != nil {
		t.Fatal(err)
	}
	if !got.IsError || got.Text != `host "169.254.169.254:443" is not in the http_fetch allow list` {
		t.Errorf("Result = %+v", got)
	}
	_, err = r.Run(context.Background(), "http_fetch", json.RawMessage(`{"url":"ftp://example.com/"}`))
	if agate.ErrorCode(err) != agate.EInvalid || !contains(err.Error(), "/url: 'ftp://example.com/' does not match pattern") {
		t.Errorf("schema check of the URL: %v", err)
	}
}
