package httpapi

import "net/http"

// route is one entry of the API. openapi.json documents exactly these (a test checks it).
type route struct {
	method, pattern string
	flags           flags
	handler         http.Handler
}

// flags say how a route is served.
type flags int

const (
	public    flags = 0         // no authentication
	private   flags = 1 << iota // goes through authentication
	streaming                   // long-lived: counted in metrics, not timed
	openaiAPI                   // errors in OpenAI's shape too, for its SDKs
	metered                     // counts against the caller's tenant request rate
)

// routes is the whole API, in one place.
func (s *Server) routes() []route {
	return []route{
		{"POST", "/v1/session/message", private | metered, s.handleSendMessage()},
		{"GET", "/v1/session/{id}/events", private | streaming, s.handleSSE()},
		{"GET", "/v1/session/{id}/stream", private | streaming, s.handleWebSocket()},
		{"GET", "/v1/sessions", private, s.handleListSessions()},
		{"GET", "/v1/sessions/{id}/events", private, s.handleListEvents()},
		{"GET", "/v1/sessions/{id}/history", private, s.handleHistory()},
		{"DELETE", "/v1/sessions/{id}", private, s.handleDeleteSession()},
		{"PUT", "/v1/sessions/{id}/viewers/{subject}", private, s.handleShareSession(true)},
		{"DELETE", "/v1/sessions/{id}/viewers/{subject}", private, s.handleShareSession(false)},
		{"POST", "/v1/chat/completions", private | openaiAPI | metered, s.handleChatCompletions()},
		{"GET", "/v1/models", private | openaiAPI, s.handleModels()},
		{"GET", "/v1/tools", private, s.handleListTools()},
		{"POST", "/v1/tool/request", private | metered, s.handleToolRequest()},
		{"GET", "/v1/admin/breakers", private, s.handleBreakers()},
		{"GET", "/v1/admin/dlq", private, s.handleDeadLetters()},
		{"POST", "/v1/keys", private, s.handleCreateKey()},
		{"GET", "/v1/keys", private, s.handleListKeys()},
		{"DELETE", "/v1/keys/{id}", private, s.handleRevokeKey()},
		{"GET", "/v1/health", public, s.handleHealth()},
		{"GET", "/livez", public, s.handleLive()},
		{"GET", "/readyz", public, s.handleReady()},
		{"GET", "/metrics", public, s.handleMetrics()},
		{"GET", "/openapi.json", public, s.handleOpenAPI()},
	}
}
