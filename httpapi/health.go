package httpapi

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// probeTimeout bounds each health probe.
const probeTimeout = 2 * time.Second

type healthBody struct {
	Status     string            `json:"status"` // ok, degraded or down
	Components map[string]string `json:"components"`
}

// health probes every component at once.
func (s *Server) health(ctx context.Context) healthBody {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	body := healthBody{Status: "ok", Components: make(map[string]string, len(s.checks))}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range s.checks {
		wg.Go(func() {
			err := c.Probe(ctx)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				body.Components[c.Name] = "ok"
			case c.Required:
				body.Components[c.Name] = "down"
				body.Status = "down"
			default:
				body.Components[c.Name] = "degraded"
				if body.Status == "ok" {
					body.Status = "degraded"
				}
			}
		})
	}
	wg.Wait()
	return body
}

// handleHealth reports each component; 503 when a required one is down.
func (s *Server) handleHealth() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := s.health(r.Context())
		st := http.StatusOK
		if body.Status == "down" {
			st = http.StatusServiceUnavailable
			w.Header().Set("Retry-After", "1")
		}
		writeJSON(w, st, body)
	})
}

// handleLive answers 200 while the process serves HTTP at all.
func (s *Server) handleLive() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

// handleReady answers 200 when the gateway can take traffic: not draining and no required
// component down. An optional component being down never makes it unready.
func (s *Server) handleReady() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() {
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
			return
		}
		if body := s.health(r.Context()); body.Status == "down" {
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, body)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
}

// handleMetrics serves the Prometheus registry the server was given.
func (s *Server) handleMetrics() http.Handler {
	return promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{})
}
