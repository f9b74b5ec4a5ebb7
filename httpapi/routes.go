package httpapi

import "net/http"

// route is one entry of the API. openapi.json documents exactly these (a test checks it).
type route struct {
	method, pattern string
	auth            bool // goes through authentication
	handler         http.Handler
}

// routes is the whole API, in one place.
func (s *Server) routes() []route {
	return []route{
		{"POST", "/v1/session/message", true, s.handleSendMessage()},
		{"GET", "/v1/session/{id}/events", true, s.handleSSE()},
		{"GET", "/v1/session/{id}/stream", true, s.handleWebSocket()},
		{"GET", "/v1/sessions", true, s.handleListSessions()},
		{"GET", "/v1/sessions/{id}/events", true, s.handleListEvents()},
		{"GET", "/v1/sessions/{id}/history", true, s.handleHistory()},
		{"DELETE", "/v1/sessions/{id}", true, s.handleDeleteSession()},
		{"GET", "/v1/health", false, s.handleHealth()},
		{"GET", "/livez", false, s.handleLive()},
		{"GET", "/readyz", false, s.handleReady()},
		{"GET", "/metrics", false, s.handleMetrics()},
		{"GET", "/openapi.json", false, s.handleOpenAPI()},
	}
}
