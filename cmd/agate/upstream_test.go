package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// upstream is a fake OpenAI-compatible provider speaking the exact Chat Completions
// streaming wire format. It answers "You said: <last user message>" word by word. Before
// sending chunk hold (if > 0) it waits until release is called or the client goes away.
type upstream struct {
	*httptest.Server
	mu       sync.Mutex
	requests []chatRequest
	hold     int           // chunk index to pause before; 0: never
	gate     chan struct{} // closed by release
	paused   chan struct{} // receives when the stream pauses at hold
}

type chatRequest struct {
	Model    string `json:"model"`
	Stream   bool   `json:"stream"`
	Messages []struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	} `json:"messages"`
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{gate: make(chan struct{}), paused: make(chan struct{}, 16)}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(func() {
		u.release()
		u.Server.CloseClientConnections()
		u.Server.Close()
	})
	return u
}

// pauseAt makes streams stop before chunk i until release.
func (u *upstream) pauseAt(i int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.hold, u.gate = i, make(chan struct{})
}

func (u *upstream) release() {
	u.mu.Lock()
	defer u.mu.Unlock()
	select {
	case <-u.gate:
	default:
		close(u.gate)
	}
}

func (u *upstream) calls() []chatRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]chatRequest(nil), u.requests...)
}

// reply is what the fake answers to a request whose last user message is msg.
func reply(msg string) string { return "You said: " + msg }

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	var req chatRequest
	if r.URL.Path != "/v1/chat/completions" || json.NewDecoder(r.Body).Decode(&req) != nil {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":{"message":"bad request","type":"invalid_request_error"}}`)
		return
	}
	u.mu.Lock()
	u.requests = append(u.requests, req)
	hold, gate := u.hold, u.gate
	u.mu.Unlock()

	last := req.Messages[len(req.Messages)-1].Content
	words := strings.SplitAfter(reply(last), " ")
	w.Header().Set("Content-Type", "text/event-stream")
	flush := func() { w.(http.Flusher).Flush() }
	chunk := func(delta, finish string) {
		d, _ := json.Marshal(map[string]string{"content": delta})
		f := "null"
		if finish != "" {
			f = `"` + finish + `"`
		}
		fmt.Fprintf(w, "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":%q,\"choices\":[{\"index\":0,\"delta\":%s,\"finish_reason\":%s}]}\n\n", req.Model, d, f)
		flush()
	}
	fmt.Fprintf(w, "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":%q,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n", req.Model)
	flush()
	for i, word := range words {
		if hold > 0 && i == hold {
			u.paused <- struct{}{}
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		chunk(word, "")
	}
	chunk("", "stop")
	fmt.Fprintf(w, "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":%q,\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n", req.Model, 10, len(words), 10+len(words))
	fmt.Fprint(w, "data: [DONE]\n\n")
	flush()
}
