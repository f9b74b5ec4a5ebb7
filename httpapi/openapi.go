package httpapi

import (
	_ "embed"
	"net/http"
)

// openapiDoc is the OpenAPI 3 description of routes(); TestOpenAPIDocumentsEveryRoute keeps
// the two in step.
//
//go:embed openapi.json
var openapiDoc []byte

func (s *Server) handleOpenAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openapiDoc)
	})
}
