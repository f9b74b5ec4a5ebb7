// Package metrics defines the gateway's Prometheus collectors, registered on an injected
// registry, and decorators that time the stages of a turn.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// HTTP holds the request metrics of the API.
type HTTP struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	SSEClients prometheus.Gauge // open SSE streams
	WSClients  prometheus.Gauge // open WebSocket connections
}

// NewHTTP registers the API's collectors on reg.
func NewHTTP(reg prometheus.Registerer) *HTTP {
	m := &HTTP{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_requests_total", Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "http_request_duration_seconds", Help: "HTTP request latency by route pattern.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		SSEClients: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sse_clients", Help: "Open SSE streams."}),
		WSClients:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "ws_clients", Help: "Open WebSocket connections."}),
	}
	reg.MustRegister(m.requests, m.duration, m.SSEClients, m.WSClients)
	return m
}

// Count records one finished request without its duration: for streams, whose length is
// the client's choice, not latency.
func (m *HTTP) Count(route string, code int) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
}

// Observe records one finished request.
func (m *HTTP) Observe(route string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(route).Observe(d.Seconds())
}
