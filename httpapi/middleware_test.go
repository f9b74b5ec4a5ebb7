package httpapi

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/agate-gw/agate/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

func TestHandlerPanicIsA500AndTheServerKeepsServing(t *testing.T) {
	var logs strings.Builder
	reg := prometheus.NewRegistry()
	s := &Server{log: slog.New(slog.NewJSONHandler(&logs, nil)), metrics: metrics.NewHTTP(reg)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /boom", func(http.ResponseWriter, *http.Request) { panic("kaboom") })
	mux.HandleFunc("GET /fine", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	srv := httptest.NewServer(s.observe(mux))
	defer srv.Close()

	res, err := http.Get(srv.URL + "/boom")
	if err != nil {
		t.Fatal(err)
	}
	var body errorBody
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 500 || body.Code != "internal_error" || body.RequestID == "" || body.RequestID != res.Header.Get("X-Request-ID") {
		t.Fatalf("panic answered %d %+v", res.StatusCode, body)
	}
	if strings.Contains(body.Detail, "kaboom") {
		t.Fatal("the panic value leaked to the client")
	}
	if !strings.Contains(logs.String(), "kaboom") {
		t.Fatal("the panic was not logged")
	}
	res, err = http.Get(srv.URL + "/fine")
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("after a panic the server answered %v %v", res, err)
	}
	if got := counter(t, reg, "http_requests_total", "GET /boom", "500"); got != 1 {
		t.Fatalf("http_requests_total{route=GET /boom,code=500} = %v, want 1", got)
	}
}

func TestRequestIDIsKeptWhenSaneAndReplacedWhenNot(t *testing.T) {
	s := &Server{log: slog.New(slog.NewJSONHandler(io.Discard, nil)), metrics: metrics.NewHTTP(prometheus.NewRegistry())}
	h := s.observe(http.NewServeMux())
	for _, tc := range []struct {
		sent string
		keep bool
	}{{"abc-123", true}, {"bad id with spaces", false}, {strings.Repeat("x", 200), false}} {
		req := httptest.NewRequest("GET", "/", nil)
		req.Header.Set("X-Request-ID", tc.sent)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		got := rec.Header().Get("X-Request-ID")
		if (got == tc.sent) != tc.keep || got == "" {
			t.Errorf("sent %q, got %q", tc.sent, got)
		}
		if rec.Header().Get("X-API-Version") != "v1" {
			t.Errorf("no X-API-Version header")
		}
	}
}

// counter reads a counter with the given route and code labels from reg.
func counter(t *testing.T, reg *prometheus.Registry, name, route, code string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["route"] == route && labels["code"] == code {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
