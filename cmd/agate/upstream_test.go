package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// upstream is a fake OpenAI-compatible provider speaking the exact Chat Completions
// streaming wire format. It answers "You said: <last user message>" word by word. Before
// sending chunk hold (if > 0) it waits until release is called or the client goes away.
type upstream struct {
	*httptest.Server
	fail     atomic.Pointer[int32]          // when set and not 0, answer every request with this status
	cutAt    atomic.Int32                   // when > 0, drop the connection before this chunk
	toolPlan atomic.Pointer[[]scriptedCall] // when set: the tool calls to make while the last message is not a tool result
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
		Role       string `json:"role"`
		Content    string `json:"content"`
		ToolCallID string `json:"tool_call_id"`
	} `json:"messages"`
	Tools []struct {
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	} `json:"tools"`
	Extra map[string]any `json:"-"`
	Raw   map[string]any `json:"-"`
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
	body, _ := io.ReadAll(r.Body)
	if r.URL.Path != "/v1/chat/completions" || json.Unmarshal(body, &req) != nil || json.Unmarshal(body, &req.Raw) != nil {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":{"message":"bad request","type":"invalid_request_error"}}`)
		return
	}
	if f := u.fail.Load(); f != nil && *f != 0 {
		w.WriteHeader(int(*f))
		fmt.Fprintf(w, `{"error":{"message":"upstream says %d","type":"server_error"}}`, *f)
		return
	}
	u.mu.Lock()
	u.requests = append(u.requests, req)
	hold, gate := u.hold, u.gate
	u.mu.Unlock()

	lastMsg := req.Messages[len(req.Messages)-1]
	last := lastMsg.Content
	if lastMsg.Role == "tool" {
		last = "tool said " + last
	}
	words := strings.SplitAfter(reply(last), " ")
	w.Header().Set("Content-Type", "text/event-stream")
	if c := u.toolPlan.Load(); c != nil && lastMsg.Role != "tool" {
		u.scriptedCalls(w, *c)
		return
	}
	if len(req.Tools) > 0 && lastMsg.Role != "tool" {
		u.toolCall(w, req)
		return
	}
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
		if cut := int(u.cutAt.Load()); cut > 0 && i == cut {
			panic(http.ErrAbortHandler) // the connection drops mid-stream
		}
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

// toolCall streams a call of the first tool, its arguments split over chunks.
func (u *upstream) toolCall(w http.ResponseWriter, req chatRequest) {
	name := req.Tools[0].Function.Name
	pieces := []string{`{"city"`, `: "Par`, `is"}`}
	send := func(s string) {
		fmt.Fprintf(w, "data: %s\n\n", s)
		w.(http.Flusher).Flush()
	}
	send(`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"` + name + `","arguments":""}}]},"finish_reason":null}]}`)
	for _, p := range pieces {
		arg, _ := json.Marshal(p)
		send(`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":` + string(arg) + `}}]},"finish_reason":null}]}`)
	}
	send(`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}`)
	send(`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}`)
	send("[DONE]")
}

// scriptedCall is a tool call the upstream makes when told to.
type scriptedCall struct{ name, args string }

// scriptedCalls streams calls as parallel tool calls, each call's arguments in two pieces.
func (u *upstream) scriptedCalls(w http.ResponseWriter, calls []scriptedCall) {
	send := func(s string) {
		fmt.Fprintf(w, "data: %s\n\n", s)
		w.(http.Flusher).Flush()
	}
	for i, c := range calls {
		send(fmt.Sprintf(`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":%d,"id":"call_%d","type":"function","function":{"name":%q,"arguments":""}}]},"finish_reason":null}]}`, i, i, c.name))
		half := len(c.args) / 2
		for _, piece := range []string{c.args[:half], c.args[half:]} {
			arg, _ := json.Marshal(piece)
			send(fmt.Sprintf(`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]},"finish_reason":null}]}`, i, arg))
		}
	}
	send(`{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}`)
	send("[DONE]")
}
