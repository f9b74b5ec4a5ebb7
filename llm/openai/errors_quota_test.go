package openai_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/openai"
)

// An exhausted quota is not a rate limit: retrying cannot help, so it is reported like a
// refused key, which the router falls back from at once.
func TestInsufficientQuotaIsNotARateLimit(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"error":{"message":"You exceeded your current quota.","type":"insufficient_quota","code":"insufficient_quota"}}`)
	}))
	defer srv.Close()
	_, err := openai.New(openai.Config{BaseURL: srv.URL, APIKey: "k"}).Generate(t.Context(),
		agate.ModelRequest{Messages: []agate.Message{{Role: "user", Content: "hi"}}}, nil)
	if agate.ErrorCode(err) != agate.EUpstreamAuth || agate.RetryAfter(err) != 0 {
		t.Fatalf("quota exhausted: %v, want %s without a retry wait", err, agate.EUpstreamAuth)
	}
}
