package httpapi

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/inmem"
)

type infoKey struct{}

// info is what the middleware learns about a request, for its log line.
type info struct {
	id      string
	tenant  string // set once authenticated
	session string // set by handlers whose session is not in the path
}

// requestID returns the id of the request in ctx.
func requestID(ctx context.Context) string {
	if in, ok := ctx.Value(infoKey{}).(*info); ok {
		return in.id
	}
	return ""
}

// newRequestID returns a random 128-bit id in hex.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms
	return hex.EncodeToString(b[:])
}

// validRequestID reports whether a client-sent X-Request-ID is safe to reuse and log.
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// recorder remembers the status a handler wrote, for logs and metrics.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush, deadlines and hijacking.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// observe wraps the mux: it gives each request an id, the API version header, a principal,
// recovers panics into a 500, and logs and measures the request by its route pattern.
func (s *Server) observe(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-ID")
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-ID", id)
		w.Header().Set("X-API-Version", "v1")
		in := &info{id: id}
		ctx := context.WithValue(r.Context(), infoKey{}, in)
		rec := &recorder{ResponseWriter: w}
		// r is passed to the mux unchanged after this point, so that the pattern and path
		// values the mux sets on it can be read here afterwards.
		r = r.WithContext(ctx)

		defer func() {
			abort := false
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.ErrorContext(ctx, "handler panicked", "request_id", id, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				if rec.status != 0 {
					abort = true // the response has begun: cut it so the client sees it fail
				} else {
					writeJSON(rec, http.StatusInternalServerError, errorBody{
						Detail: agate.ErrorMessage(nil), Code: agate.EInternal, RequestID: id,
					})
				}
			}
			route := r.Pattern
			if route == "" || route == "/" {
				route = "unmatched"
			}
			st := rec.status
			if st == 0 {
				st = http.StatusOK
			}
			d := time.Since(start)
			if s.streams[route] {
				s.metrics.Count(route, st)
			} else {
				s.metrics.Observe(route, st, d)
			}
			attrs := []slog.Attr{
				slog.String("request_id", id), slog.String("method", r.Method), slog.String("route", route),
				slog.String("path", r.URL.Path), slog.Int("status", st), slog.Float64("duration_ms", float64(d.Microseconds())/1000),
				slog.Int64("bytes", rec.bytes),
			}
			if in.tenant != "" {
				attrs = append(attrs, slog.String("tenant", in.tenant))
			}
			if sid := cmp.Or(r.PathValue("id"), in.session); sid != "" {
				attrs = append(attrs, slog.String("session_id", sid))
			}
			s.log.LogAttrs(ctx, slog.LevelInfo, "request", attrs...)
			if abort {
				panic(http.ErrAbortHandler)
			}
		}()
		mux.ServeHTTP(rec, r)
	})
}

// authenticate resolves the caller before h runs, answering refusals with fail. An
// infrastructure failure while checking credentials is never a 401: its error carries its
// own code.
func (s *Server) authenticate(h http.Handler, fail func(http.ResponseWriter, *http.Request, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.auth.Authenticate(r)
		if err != nil {
			fail(w, r, err)
			return
		}
		if in, ok := r.Context().Value(infoKey{}).(*info); ok {
			in.tenant = p.Tenant
		}
		h.ServeHTTP(w, r.WithContext(agate.NewContext(r.Context(), p)))
	})
}

// meter refuses a request over its tenant's rate (the tenant's requests_per_minute, else
// Config.TenantLimit) or, for an API key, over the key's (Config.KeyLimit), with 429 and the
// time until one more would be allowed.
func (s *Server) meter(h http.Handler, fail func(http.ResponseWriter, *http.Request, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.rateCheck(r, principal(r)); err != nil {
			fail(w, r, err)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// rateCheck takes one request of p's allowances: its tenant's and, for an API key, the
// key's. WebSocket message frames are metered with it too.
func (s *Server) rateCheck(r *http.Request, p agate.Principal) error {
	tenant := s.cfg.TenantLimit
	if s.tenants != nil {
		if rpm := s.tenants(p.Tenant).RequestsPerMinute; rpm > 0 {
			tenant = inmem.Limit{Rate: rpm, Per: time.Minute}
		}
	}
	if err := s.allow(r, "tenant:"+p.Tenant, tenant, fmt.Sprintf("Tenant %q", p.Tenant)); err != nil {
		return err
	}
	if p.Via == agate.ViaAPIKey {
		return s.allow(r, "key:"+p.KeyID, s.cfg.KeyLimit, fmt.Sprintf("API key %s", p.KeyID))
	}
	return nil
}

// allow takes one request from key's allowance under lim (zero: unlimited).
func (s *Server) allow(r *http.Request, key string, lim inmem.Limit, who string) error {
	if lim.Rate <= 0 {
		return nil
	}
	d, err := s.limiter.Allow(r.Context(), key, lim)
	if err != nil {
		s.logError(r, fmt.Errorf("rate limiter: %w", err)) // let it through: a limiter bug is no reason to refuse
		return nil
	}
	if !d.Allowed {
		return &agate.Error{Code: agate.ERateLimited, RetryAfter: d.RetryAfter,
			Message: fmt.Sprintf("%s is over its limit of %d requests per %s; retry later.", who, lim.Rate, lim.Per)}
	}
	return nil
}
