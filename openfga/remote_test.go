package openfga_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/openfga"
)

// fgaServer is a private `openfga run` on spare loopback ports, which a test may stop and
// start again. Its methods must be called from the test's goroutine.
type fgaServer struct {
	t    testing.TB
	bin  string
	args []string
	log  string
	url  string
	cmd  *exec.Cmd
}

// startOpenFGA starts the OpenFGA server at $AGATE_TEST_OPENFGA_BIN (scripts/services.sh up
// installs it and prints the setting) with datastore "memory" or "sqlite" (in a temporary
// file, so that the tuples survive a restart), and stops it at cleanup. Without the
// binary, t is skipped, or fails when CI=true.
func startOpenFGA(t testing.TB, datastore string) *fgaServer {
	t.Helper()
	bin := os.Getenv("AGATE_TEST_OPENFGA_BIN")
	if bin == "" {
		const why = "AGATE_TEST_OPENFGA_BIN is not set: this test runs the OpenFGA server binary (scripts/services.sh up installs it)"
		if os.Getenv("CI") == "true" {
			t.Fatal(why + " (CI must run this test)")
		}
		t.Skip(why)
	}
	dir := t.TempDir()
	httpAddr, grpcAddr := spareAddr(t), spareAddr(t)
	s := &fgaServer{t: t, bin: bin, log: filepath.Join(dir, "openfga.log"), url: "http://" + httpAddr}
	s.args = []string{"run", "--datastore-engine", datastore,
		"--http-addr", httpAddr, "--grpc-addr", grpcAddr,
		"--playground-enabled=false", "--metrics-enabled=false", "--log-level", "warn"}
	if datastore == "sqlite" {
		uri := "file:" + filepath.Join(dir, "openfga.db")
		s.args = append(s.args, "--datastore-uri", uri)
		out, err := exec.Command(bin, "migrate", "--datastore-engine", "sqlite", "--datastore-uri", uri, "--log-level", "warn").CombinedOutput()
		if err != nil {
			t.Fatalf("openfga migrate: %v\n%s", err, out)
		}
	}
	t.Cleanup(s.stop)
	s.start()
	return s
}

func (s *fgaServer) start() {
	s.t.Helper()
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	defer logf.Close()
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start openfga: %v", err)
	}
	exited := make(chan struct{})
	go func(cmd *exec.Cmd) { cmd.Process.Wait(); close(exited) }(s.cmd)
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get(s.url + "/healthz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-exited:
			s.cmd = nil
			s.t.Fatalf("openfga exited at start:\n%s", s.logs())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			s.t.Fatalf("openfga not ready on %s within 30s:\n%s", s.url, s.logs())
		}
	}
}

// stop kills the server, as an outage would.
func (s *fgaServer) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

func (s *fgaServer) logs() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

func spareAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func newRemote(t testing.TB, cfg openfga.RemoteConfig) *openfga.Remote {
	t.Helper()
	r, err := openfga.NewRemote(context.Background(), cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestRemoteAuthorizer(t *testing.T) {
	srv := startOpenFGA(t, "memory")
	testAuthorizer(t, newRemote(t, openfga.RemoteConfig{APIURL: srv.url, Create: true}))
}

func TestRemoteReusesAStoreAndModel(t *testing.T) {
	ctx := context.Background()
	srv := startOpenFGA(t, "memory")
	first := newRemote(t, openfga.RemoteConfig{APIURL: srv.url, Create: true})
	if first.StoreID() == "" || first.ModelID() == "" {
		t.Fatalf("store %q, model %q: want both", first.StoreID(), first.ModelID())
	}
	if err := first.Write(ctx, agate.Tuple{User: "user:bob", Relation: "owner", Object: "session:s1"}); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []openfga.RemoteConfig{
		{APIURL: srv.url, StoreID: first.StoreID(), ModelID: first.ModelID()},
		{APIURL: srv.url, StoreID: first.StoreID()},               // the latest model
		{APIURL: srv.url, StoreID: first.StoreID(), Create: true}, // writes no second model
	} {
		r := newRemote(t, cfg)
		if r.StoreID() != first.StoreID() || r.ModelID() != first.ModelID() {
			t.Errorf("%+v: store %s, model %s; want %s, %s", cfg, r.StoreID(), r.ModelID(), first.StoreID(), first.ModelID())
		}
		if ok, err := r.Check(ctx, bobWrites); !ok || err != nil {
			t.Errorf("%+v: Check = %v, %v; want true", cfg, ok, err)
		}
	}
}

func TestNewRemoteRefusesIncompleteSettings(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []openfga.RemoteConfig{
		{},                             // no URL
		{APIURL: "http://127.0.0.1:1"}, // no store, no Create
	} {
		if _, err := openfga.NewRemote(ctx, cfg, nil); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}

func TestNewRemoteWritesTheModelIntoAnEmptyStoreOnlyWithCreate(t *testing.T) {
	srv := startOpenFGA(t, "memory")
	res, err := http.Post(srv.url+"/stores", "application/json", strings.NewReader(`{"name":"bare"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var store struct{ ID string }
	if err := json.NewDecoder(res.Body).Decode(&store); err != nil || store.ID == "" {
		t.Fatalf("create store: %v, %+v", err, store)
	}
	if _, err := openfga.NewRemote(context.Background(), openfga.RemoteConfig{APIURL: srv.url, StoreID: store.ID}, nil); err == nil {
		t.Fatal("NewRemote on a store without a model, without Create: no error")
	}
	r := newRemote(t, openfga.RemoteConfig{APIURL: srv.url, StoreID: store.ID, Create: true})
	if r.ModelID() == "" {
		t.Fatal("no model id")
	}
	if err := r.Write(context.Background(), agate.Tuple{User: "user:bob", Relation: "owner", Object: "session:s1"}); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.Check(context.Background(), bobWrites); !ok || err != nil {
		t.Fatalf("Check = %v, %v; want true", ok, err)
	}
}

func TestNewRemoteWhenOpenFGAIsDownIsUnavailable(t *testing.T) {
	url := "http://" + spareAddr(t) // nothing listens there
	_, err := openfga.NewRemote(context.Background(), openfga.RemoteConfig{APIURL: url, Create: true, Timeout: time.Second}, nil)
	if got := agate.ErrorCode(err); got != agate.EUnavailable {
		t.Fatalf("NewRemote: code %q (%v), want %q", got, err, agate.EUnavailable)
	}
}

// TestCachedServesRecentAllowsWhileOpenFGAIsDown: the OpenFGA server dies; recent allows
// are served for the TTL, then checks fail with EUnavailable (never a deny); a deny is
// never served as an allow; when the server is back, decisions are fresh again.
func TestCachedServesRecentAllowsWhileOpenFGAIsDown(t *testing.T) {
	ctx := context.Background()
	srv := startOpenFGA(t, "sqlite") // the tuples survive the restart
	r := newRemote(t, openfga.RemoteConfig{APIURL: srv.url, Create: true, Timeout: time.Second})
	c, clk, reg := newCached(t, r, 30*time.Second)
	if err := c.Write(ctx,
		agate.Tuple{User: "user:bob", Relation: "owner", Object: "session:s1"},
		agate.Tuple{User: "user:mel", Relation: "member", Object: "tenant:acme"},
		agate.Tuple{User: "tenant:acme", Relation: "tenant", Object: "session:s1"},
	); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Check(ctx, bobWrites); !ok || err != nil {
		t.Fatalf("up: Check = %v, %v; want true", ok, err)
	}
	if ok, err := c.Check(ctx, melReads); ok || err != nil {
		t.Fatalf("up: Check = %v, %v; want false", ok, err)
	}

	srv.stop()
	clk.Add(20 * time.Second)
	if ok, err := c.Check(ctx, bobWrites); !ok || err != nil {
		t.Fatalf("down, within TTL: Check = %v, %v; want a stale true", ok, err)
	}
	checkUnavailable(t, c, melReads)
	err := c.Write(ctx, agate.Tuple{User: "user:vic", Relation: "viewer", Object: "session:s1"})
	if got := agate.ErrorCode(err); got != agate.EUnavailable {
		t.Fatalf("down: Write: code %q (%v), want %q", got, err, agate.EUnavailable)
	}
	clk.Add(11 * time.Second)
	err = checkUnavailable(t, c, bobWrites)
	if !strings.Contains(err.Error(), "openfga check") {
		t.Errorf("error %q does not say what failed", err)
	}
	wantDecisions(t, reg, map[string]float64{"allow": 1, "deny": 1, "stale": 1, "error": 2})

	srv.start()
	if ok, err := c.Check(ctx, bobWrites); !ok || err != nil {
		t.Fatalf("back up: Check = %v, %v; want true", ok, err)
	}
	if ok, err := c.Check(ctx, melReads); ok || err != nil {
		t.Fatalf("back up: Check = %v, %v; want false", ok, err)
	}
	wantDecisions(t, reg, map[string]float64{"allow": 2, "deny": 2, "stale": 1, "error": 2})
}

func TestRemoteSendsTheAPIToken(t *testing.T) {
	srv := startOpenFGA(t, "memory")
	seen := make(chan string, 10)
	rt := roundTripper(func(req *http.Request) (*http.Response, error) {
		seen <- req.Header.Get("Authorization")
		return http.DefaultTransport.RoundTrip(req)
	})
	r := newRemote(t, openfga.RemoteConfig{APIURL: srv.url, Create: true, APIToken: "s3cret", HTTPClient: &http.Client{Transport: rt}})
	if _, err := r.Check(context.Background(), bobWrites); err != nil {
		t.Fatal(err)
	}
	for len(seen) > 0 {
		if got := <-seen; got != "Bearer s3cret" {
			t.Fatalf("Authorization %q, want %q", got, "Bearer s3cret")
		}
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
