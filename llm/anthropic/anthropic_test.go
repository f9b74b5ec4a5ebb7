package anthropic_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/anthropic"
	"github.com/agate-gw/agate/turn"
	"github.com/google/go-cmp/cmp"
)

var _ turn.Model = (*anthropic.Client)(nil)

// The optional token-counting capability, as a consumer would declare it.
var _ interface {
	CountTokens(context.Context, agate.ModelRequest) (int, error)
} = (*anthropic.Client)(nil)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const testKey = "sk-ant-api03-test-5ecret-KEY-0123456789"

// serve starts a test server that answers every request with h.
func serve(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// sse answers with an event stream written in pieces, flushing after each, then waits
// for the client to go away if stall is set.
func sse(stall bool, pieces ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body) // so that the server notices when the client goes away
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		if err := rc.Flush(); err != nil {
			return
		}
		for _, p := range pieces {
			if _, err := io.WriteString(w, p); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
		if stall {
			<-r.Context().Done()
		}
	}
}

// hang waits for the client to go away.
func hang(r *http.Request) {
	io.Copy(io.Discard, r.Body)
	<-r.Context().Done()
}

func transcript(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// bytesOf splits s into one-byte pieces.
func bytesOf(s string) []string {
	out := make([]string, len(s))
	for i := range len(s) {
		out[i] = s[i : i+1]
	}
	return out
}

// events renders Anthropic stream events, each a JSON object, as an event stream.
func events(objs ...string) string {
	var b strings.Builder
	for _, o := range objs {
		var v struct{ Type string }
		json.Unmarshal([]byte(o), &v)
		b.WriteString("event: " + v.Type + "\ndata: " + o + "\n\n")
	}
	return b.String()
}

const (
	evStart = `{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}`
	evText  = `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`
	evHel   = `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}`
	evStop  = `{"type":"message_stop"}`
)

func evDelta(stopReason string) string {
	return `{"type":"message_delta","delta":{"stop_reason":"` + stopReason + `","stop_sequence":null},"usage":{"output_tokens":2}}`
}

// recorder collects the deltas emitted to it.
type recorder struct{ deltas []agate.Delta }

func (r *recorder) emit(d agate.Delta) error {
	r.deltas = append(r.deltas, d)
	return nil
}

func (r *recorder) text() string {
	var b strings.Builder
	for _, d := range r.deltas {
		b.WriteString(d.Text)
	}
	return b.String()
}

func userRequest(text string) agate.ModelRequest {
	return agate.ModelRequest{Messages: []agate.Message{{Role: agate.RoleUser, Content: text}}}
}

// code returns the agate code of err, or "" when err carries none.
func code(err error) agate.Code {
	var e *agate.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func text(s string) agate.Delta { return agate.Delta{Text: s} }

func callStart(i int, id, name string) agate.Delta {
	return agate.Delta{ToolCall: &agate.ToolCallDelta{Index: i, ID: id, Name: name}}
}

func callArgs(i int, args string) agate.Delta {
	return agate.Delta{ToolCall: &agate.ToolCallDelta{Index: i, Arguments: args}}
}

func TestStreamsReplyFromTranscripts(t *testing.T) {
	tests := []struct {
		file       string
		wantDeltas []agate.Delta
		wantReply  agate.Reply
		wantCode   agate.Code
	}{{
		file:       "text.sse",
		wantDeltas: []agate.Delta{text("Hello"), text(", wörld! 👋")},
		wantReply: agate.Reply{
			Text: "Hello, wörld! 👋", Model: "claude-sonnet-4-5-20250929", FinishReason: agate.FinishStop,
			Usage: agate.Usage{PromptTokens: 25, CompletionTokens: 15, TotalTokens: 40},
		},
	}, {
		file: "tool_use.sse",
		wantDeltas: []agate.Delta{
			text("Okay, let"), text("'s check the weather and the time:"),
			callStart(0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather"),
			callArgs(0, `{"location":`), callArgs(0, ` "San Francisco, CA"`), callArgs(0, `, "unit": "fahrenheit"}`),
			callStart(1, "toolu_01EjbmDLTn1iEsKNmiT1tsMN", "get_time"),
			callArgs(1, `{"timezone": "America/`), callArgs(1, `Los_Angeles"}`),
		},
		wantReply: agate.Reply{
			Text: "Okay, let's check the weather and the time:",
			ToolCalls: []agate.ToolCall{
				{ID: "toolu_01T1x1fJ34qAmk2tNTrN7Up6", Name: "get_weather", Arguments: `{"location": "San Francisco, CA", "unit": "fahrenheit"}`},
				{ID: "toolu_01EjbmDLTn1iEsKNmiT1tsMN", Name: "get_time", Arguments: `{"timezone": "America/Los_Angeles"}`},
			},
			Model: "claude-sonnet-4-5-20250929", FinishReason: agate.FinishToolCalls,
			Usage: agate.Usage{PromptTokens: 472 + 1024, CompletionTokens: 89, TotalTokens: 472 + 1024 + 89},
		},
	}, {
		file:       "tool_without_input.sse",
		wantDeltas: []agate.Delta{callStart(0, "toolu_01VbvvRVZDgGkH8fyuK4VFqS", "get_time"), {ToolCall: &agate.ToolCallDelta{Arguments: "{}"}}},
		wantReply: agate.Reply{
			ToolCalls: []agate.ToolCall{{ID: "toolu_01VbvvRVZDgGkH8fyuK4VFqS", Name: "get_time", Arguments: "{}"}},
			Model:     "claude-haiku-4-5-20251001", FinishReason: agate.FinishToolCalls,
			Usage: agate.Usage{PromptTokens: 310, CompletionTokens: 33, TotalTokens: 343},
		},
	}, {
		file:       "error_overloaded.sse",
		wantDeltas: []agate.Delta{text("Once upon")},
		wantReply: agate.Reply{
			Text: "Once upon", Model: "claude-sonnet-4-5-20250929",
			Usage: agate.Usage{PromptTokens: 12, CompletionTokens: 1, TotalTokens: 13},
		},
		wantCode: agate.EUpstream,
	}, {
		file:       "truncated.sse",
		wantDeltas: []agate.Delta{text("Once upon"), text(" a time")},
		wantReply: agate.Reply{
			Text: "Once upon a time", Model: "claude-sonnet-4-5-20250929",
			Usage: agate.Usage{PromptTokens: 12, CompletionTokens: 1, TotalTokens: 13},
		},
		wantCode: agate.EStreamTruncated,
	}, {
		// A stop_reason makes the reply complete even if message_stop never comes.
		file:       "stop_without_message_stop.sse",
		wantDeltas: []agate.Delta{text("Done")},
		wantReply: agate.Reply{
			Text: "Done", Model: "claude-sonnet-4-5-20250929", FinishReason: agate.FinishLength,
			Usage: agate.Usage{PromptTokens: 9, CompletionTokens: 1, TotalTokens: 10},
		},
	}}
	for _, tt := range tests {
		raw := transcript(t, tt.file)
		variants := map[string][]string{
			"whole":         {raw},
			"byte by byte":  bytesOf(raw),
			"CRLF":          {strings.ReplaceAll(raw, "\n", "\r\n")},
			"CRLF by bytes": bytesOf(strings.ReplaceAll(raw, "\n", "\r\n")),
		}
		for name, pieces := range variants {
			t.Run(tt.file+"/"+name, func(t *testing.T) {
				srv := serve(t, sse(false, pieces...))
				c := anthropic.New(anthropic.Config{BaseURL: srv.URL, Model: "m"})
				var rec recorder
				got, err := c.Generate(t.Context(), userRequest("hi"), rec.emit)
				if code(err) != tt.wantCode || (tt.wantCode == "" && err != nil) {
					t.Fatalf("err = %v, want code %q", err, tt.wantCode)
				}
				if diff := cmp.Diff(tt.wantDeltas, rec.deltas); diff != "" {
					t.Errorf("deltas (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tt.wantReply, got); diff != "" {
					t.Errorf("reply (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestErrorEvents(t *testing.T) {
	tests := []struct {
		name, data  string
		wantCode    agate.Code
		wantMessage string
	}{{
		name:        "overloaded",
		data:        `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`,
		wantCode:    agate.EUpstream,
		wantMessage: "Anthropic is overloaded and stopped the reply: Overloaded. Try again shortly.",
	}, {
		name:        "rate limited",
		data:        `{"type":"error","error":{"type":"rate_limit_error","message":"Number of concurrent connections has exceeded your rate limit."}}`,
		wantCode:    agate.EUpstreamRate,
		wantMessage: "Anthropic is rate limiting the gateway: Number of concurrent connections has exceeded your rate limit.",
	}, {
		name:        "authentication",
		data:        `{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}`,
		wantCode:    agate.EUpstreamAuth,
		wantMessage: "Anthropic refused the gateway's credentials: invalid x-api-key. Check the Anthropic API key.",
	}, {
		name:        "permission",
		data:        `{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}`,
		wantCode:    agate.EUpstreamAuth,
		wantMessage: "Anthropic refused the gateway's credentials: Your API key does not have permission to use the specified resource. Check the Anthropic API key.",
	}, {
		name:        "api error",
		data:        `{"type":"error","error":{"type":"api_error","message":"Internal server error"}}`,
		wantCode:    agate.EUpstream,
		wantMessage: "Anthropic reported an error (api_error): Internal server error.",
	}, {
		name:        "plain text from a proxy",
		data:        "upstream reset",
		wantCode:    agate.EUpstream,
		wantMessage: "Anthropic reported an error: upstream reset.",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := serve(t, sse(true, events(evStart, evText, evHel)+"event: error\ndata: "+tt.data+"\n\n"))
			got, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
			if code(err) != tt.wantCode {
				t.Fatalf("err = %v, want code %q", err, tt.wantCode)
			}
			if diff := cmp.Diff(tt.wantMessage, agate.ErrorMessage(err)); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
			if got.Text != "Hel" {
				t.Errorf("partial text = %q", got.Text)
			}
		})
	}
}

func TestStopReasons(t *testing.T) {
	for reason, want := range map[string]string{
		"end_turn":      agate.FinishStop,
		"stop_sequence": agate.FinishStop,
		"max_tokens":    agate.FinishLength,
		"tool_use":      agate.FinishToolCalls,
		"refusal":       agate.FinishFilter,
		"pause_turn":    "pause_turn", // unknown to the canonical set: passed on
	} {
		t.Run(reason, func(t *testing.T) {
			srv := serve(t, sse(false, events(evStart, evText, evHel, evDelta(reason), evStop)))
			got, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
			if err != nil {
				t.Fatal(err)
			}
			if got.FinishReason != want {
				t.Errorf("finish reason = %q, want %q", got.FinishReason, want)
			}
		})
	}
}

func TestUnknownEventsAndBlocksAreSkipped(t *testing.T) {
	srv := serve(t, sse(false, events(
		evStart,
		`{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}`,
		`{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think."}}`,
		`{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}`,
		`{"type":"content_block_stop","index":0}`,
		`{"type":"content_block_start","index":1,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}`,
		`{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"query\":\"x\"}"}}`,
		`{"type":"content_block_stop","index":1}`,
		`{"type":"some_future_event","index":7}`,
		`{"type":"content_block_start","index":2,"content_block":{"type":"text","text":"Hi"}}`,
		evDelta("end_turn"), evStop)))
	var rec recorder
	got, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), rec.emit)
	if err != nil {
		t.Fatal(err)
	}
	want := agate.Reply{Text: "Hi", Model: "claude-x", FinishReason: "stop", Usage: agate.Usage{PromptTokens: 3, CompletionTokens: 2, TotalTokens: 5}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reply (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]agate.Delta{text("Hi")}, rec.deltas); diff != "" {
		t.Errorf("deltas (-want +got):\n%s", diff)
	}
}

// richRequest uses every field of a ModelRequest.
func richRequest() agate.ModelRequest {
	temp, topP := 0.7, 0.9
	return agate.ModelRequest{
		Model:       "claude-sonnet-4-5",
		MaxTokens:   1024,
		Temperature: &temp,
		TopP:        &topP,
		Stop:        []string{"\n\nHuman:", "END"},
		Tools: []agate.Tool{{
			Name:        "get_weather",
			Description: "Current weather of a city.",
			Parameters:  json.RawMessage(`{"type":"object","properties":{"location":{"type":"string"},"unit":{"type":"string","enum":["celsius","fahrenheit"]}},"required":["location"]}`),
		}, {
			Name: "get_time",
		}},
		ToolChoice:     "auto",
		ResponseFormat: json.RawMessage(`{"type":"json_object"}`), // ignored
		Extra:          map[string]json.RawMessage{"seed": json.RawMessage(`7`)},
		Messages: []agate.Message{
			{Role: agate.RoleSystem, Content: "You are terse."},
			{Role: agate.RoleUser, Content: "What's the weather in Paris, and the time?"},
			{Role: agate.RoleAssistant, Content: "Let me look.", ToolCalls: []agate.ToolCall{
				{ID: "toolu_01A", Name: "get_weather", Arguments: `{"location": "Paris", "unit": "celsius"}`},
				{ID: "toolu_01B", Name: "get_time", Arguments: ""},
			}},
			{Role: agate.RoleTool, ToolCallID: "toolu_01A", Content: "18°C, cloudy"},
			{Role: agate.RoleTool, ToolCallID: "toolu_01B", Content: "14:05"},
			{Role: agate.RoleSystem, Content: "Answer in French."},
			{Role: agate.RoleUser, Content: "Merci !"},
			{Role: agate.RoleAssistant, Content: "Il fait 18°C et il est 14h05."},
			{Role: agate.RoleUser, Content: "  "},
			{Role: agate.RoleUser, Content: "Et demain ?"},
		},
	}
}

// sent is what a test server received.
type sent struct {
	Method, Path string
	Header       map[string]string
	Body         []byte
}

// capture answers with a minimal complete stream and records each request.
func capture(t *testing.T, headers ...string) (*httptest.Server, *sent) {
	got := &sent{}
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Error(err)
		}
		*got = sent{Method: r.Method, Path: r.URL.Path, Header: map[string]string{}, Body: body}
		for _, k := range headers {
			got.Header[k] = r.Header.Get(k)
		}
		sse(false, events(evStart, evDelta("end_turn"), evStop))(w, r)
	})
	return srv, got
}

func TestRequestBodyGolden(t *testing.T) {
	srv, got := capture(t)
	c := anthropic.New(anthropic.Config{BaseURL: srv.URL, Model: "unused"})
	if _, err := c.Generate(t.Context(), richRequest(), (&recorder{}).emit); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "request_rich.json")
	if *update {
		var b bytes.Buffer
		if err := json.Indent(&b, got.Body, "", "  "); err != nil {
			t.Fatal(err)
		}
		b.WriteByte('\n')
		if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(decode(t, want), decode(t, got.Body)); diff != "" {
		t.Errorf("request body (-%s +got):\n%s", golden, diff)
	}
}

func decode(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return v
}

func TestRequestHeaders(t *testing.T) {
	names := []string{"X-Api-Key", "Anthropic-Version", "Content-Type", "Accept", "Anthropic-Beta", "Authorization"}
	tests := []struct {
		name string
		cfg  anthropic.Config
		want map[string]string
	}{{
		name: "defaults",
		cfg:  anthropic.Config{APIKey: testKey},
		want: map[string]string{
			"X-Api-Key": testKey, "Anthropic-Version": "2023-06-01", "Content-Type": "application/json",
			"Accept": "text/event-stream", "Anthropic-Beta": "", "Authorization": "",
		},
	}, {
		name: "version and extra headers, no key",
		cfg: anthropic.Config{Version: "2024-01-01", Headers: map[string]string{
			"anthropic-beta": "token-efficient-tools-2025-02-19", "authorization": "Bearer proxy-token",
		}},
		want: map[string]string{
			"X-Api-Key": "", "Anthropic-Version": "2024-01-01", "Content-Type": "application/json",
			"Accept": "text/event-stream", "Anthropic-Beta": "token-efficient-tools-2025-02-19", "Authorization": "Bearer proxy-token",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, got := capture(t, names...)
			cfg := tt.cfg
			cfg.BaseURL = srv.URL
			if _, err := anthropic.New(cfg).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"POST", "/v1/messages"}, []string{got.Method, got.Path}); diff != "" {
				t.Errorf("method, path (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, got.Header); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRequestDefaults(t *testing.T) {
	tests := []struct {
		name string
		cfg  anthropic.Config
		req  agate.ModelRequest
		want string
	}{{
		name: "config model and default max_tokens",
		cfg:  anthropic.Config{Model: "claude-haiku-4-5"},
		req:  userRequest("Hi"),
		want: `{"model":"claude-haiku-4-5","max_tokens":4096,"stream":true,
			"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}`,
	}, {
		name: "config max_tokens",
		cfg:  anthropic.Config{Model: "m", MaxTokens: 512},
		req:  userRequest("Hi"),
		want: `{"model":"m","max_tokens":512,"stream":true,
			"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}`,
	}, {
		name: "no messages is an empty list",
		cfg:  anthropic.Config{Model: "m"},
		want: `{"model":"m","max_tokens":4096,"stream":true,"messages":[]}`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, got := capture(t)
			cfg := tt.cfg
			cfg.BaseURL = srv.URL
			if _, err := anthropic.New(cfg).Generate(t.Context(), tt.req, (&recorder{}).emit); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(decode(t, []byte(tt.want)), decode(t, got.Body)); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMessageMapping(t *testing.T) {
	call := func(id, name, args string) agate.ToolCall { return agate.ToolCall{ID: id, Name: name, Arguments: args} }
	tests := []struct {
		name       string
		msgs       []agate.Message
		wantSystem string // "" when absent
		want       string // the "messages" field
	}{{
		name: "system messages anywhere join into the system prompt",
		msgs: []agate.Message{
			{Role: "system", Content: "Be brief."},
			{Role: "user", Content: "Hi"},
			{Role: "system", Content: "Use French."},
			{Role: "system", Content: " "},
		},
		wantSystem: "Be brief.\n\nUse French.",
		want:       `[{"role":"user","content":[{"type":"text","text":"Hi"}]}]`,
	}, {
		name: "consecutive same-role messages merge",
		msgs: []agate.Message{
			{Role: "user", Content: "One"},
			{Role: "user", Content: "Two"},
			{Role: "assistant", Content: "A"},
			{Role: "assistant", Content: "B"},
		},
		want: `[{"role":"user","content":[{"type":"text","text":"One"},{"type":"text","text":"Two"}]},
			{"role":"assistant","content":[{"type":"text","text":"A"},{"type":"text","text":"B"}]}]`,
	}, {
		name: "a system message between users does not break the merge",
		msgs: []agate.Message{
			{Role: "user", Content: "One"},
			{Role: "system", Content: "S"},
			{Role: "user", Content: "Two"},
		},
		wantSystem: "S",
		want:       `[{"role":"user","content":[{"type":"text","text":"One"},{"type":"text","text":"Two"}]}]`,
	}, {
		name: "blank messages are left out, and their neighbours merge",
		msgs: []agate.Message{
			{Role: "user", Content: "One"},
			{Role: "assistant", Content: "\n"},
			{Role: "user", Content: "Two"},
		},
		want: `[{"role":"user","content":[{"type":"text","text":"One"},{"type":"text","text":"Two"}]}]`,
	}, {
		name: "tool calls follow the assistant's text; tool results merge into one user message",
		msgs: []agate.Message{
			{Role: "user", Content: "Weather?"},
			{Role: "assistant", Content: "Looking.", ToolCalls: []agate.ToolCall{
				call("toolu_1", "weather", `{"city":"Paris"}`), call("toolu_2", "time", ""),
			}},
			{Role: "tool", ToolCallID: "toolu_1", Content: "18°C"},
			{Role: "tool", ToolCallID: "toolu_2", Content: ""},
		},
		want: `[{"role":"user","content":[{"type":"text","text":"Weather?"}]},
			{"role":"assistant","content":[{"type":"text","text":"Looking."},
				{"type":"tool_use","id":"toolu_1","name":"weather","input":{"city":"Paris"}},
				{"type":"tool_use","id":"toolu_2","name":"time","input":{}}]},
			{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"18°C"},
				{"type":"tool_result","tool_use_id":"toolu_2"}]}]`,
	}, {
		name: "an assistant message with only tool calls has no text block",
		msgs: []agate.Message{
			{Role: "user", Content: "Go"},
			{Role: "assistant", ToolCalls: []agate.ToolCall{call("toolu_1", "run", " {\"n\": [1, 2]} ")}},
			{Role: "tool", ToolCallID: "toolu_1", Content: "ok"},
		},
		want: `[{"role":"user","content":[{"type":"text","text":"Go"}]},
			{"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"run","input":{"n":[1,2]}}]},
			{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"ok"}]}]`,
	}, {
		name: "tool results come before the user's text they merge with",
		msgs: []agate.Message{
			{Role: "assistant", ToolCalls: []agate.ToolCall{call("toolu_1", "a", "{}"), call("toolu_2", "b", "{}")}},
			{Role: "tool", ToolCallID: "toolu_1", Content: "A"},
			{Role: "user", Content: "Also, hurry."},
			{Role: "tool", ToolCallID: "toolu_2", Content: "B"},
		},
		want: `[{"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"a","input":{}},
				{"type":"tool_use","id":"toolu_2","name":"b","input":{}}]},
			{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"A"},
				{"type":"tool_result","tool_use_id":"toolu_2","content":"B"},
				{"type":"text","text":"Also, hurry."}]}]`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, got := capture(t)
			_, err := anthropic.New(anthropic.Config{BaseURL: srv.URL, Model: "m"}).
				Generate(t.Context(), agate.ModelRequest{Messages: tt.msgs}, (&recorder{}).emit)
			if err != nil {
				t.Fatal(err)
			}
			var body struct {
				System   string          `json:"system"`
				Messages json.RawMessage `json:"messages"`
			}
			if err := json.Unmarshal(got.Body, &body); err != nil {
				t.Fatal(err)
			}
			if body.System != tt.wantSystem {
				t.Errorf("system = %q, want %q", body.System, tt.wantSystem)
			}
			if diff := cmp.Diff(decode(t, []byte(tt.want)), decode(t, body.Messages)); diff != "" {
				t.Errorf("messages (-want +got):\n%s", diff)
			}
		})
	}
}

func TestToolsAndToolChoice(t *testing.T) {
	tools := []agate.Tool{{Name: "a", Parameters: json.RawMessage(`{"type":"object","properties":{}}`)}, {Name: "b", Parameters: json.RawMessage(`null`)}}
	toolsJSON := `[{"name":"a","input_schema":{"type":"object","properties":{}}},{"name":"b","input_schema":{"type":"object"}}]`
	tests := []struct {
		choice string
		tools  []agate.Tool
		want   string // tools and tool_choice
	}{
		{"", tools, `{"tools":` + toolsJSON + `}`},
		{"auto", tools, `{"tools":` + toolsJSON + `,"tool_choice":{"type":"auto"}}`},
		{"required", tools, `{"tools":` + toolsJSON + `,"tool_choice":{"type":"any"}}`},
		{"none", tools, `{"tools":` + toolsJSON + `,"tool_choice":{"type":"none"}}`},
		{"b", tools, `{"tools":` + toolsJSON + `,"tool_choice":{"type":"tool","name":"b"}}`},
		{"auto", nil, `{}`},
		{"none", nil, `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.choice, func(t *testing.T) {
			srv, got := capture(t)
			req := userRequest("hi")
			req.Tools, req.ToolChoice = tt.tools, tt.choice
			if _, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(t.Context(), req, (&recorder{}).emit); err != nil {
				t.Fatal(err)
			}
			var body map[string]any
			json.Unmarshal(got.Body, &body)
			gotTools := map[string]any{}
			for _, k := range []string{"tools", "tool_choice"} {
				if v, ok := body[k]; ok {
					gotTools[k] = v
				}
			}
			if diff := cmp.Diff(decode(t, []byte(tt.want)), any(gotTools)); diff != "" {
				t.Errorf("tools (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInvalidRequestsAreNotSent(t *testing.T) {
	nan := func() *float64 { z := 0.0; v := z / z; return &v }()
	tests := []struct {
		name        string
		req         agate.ModelRequest
		wantMessage string
	}{{
		name: "arguments not JSON",
		req: agate.ModelRequest{Messages: []agate.Message{{Role: "assistant", ToolCalls: []agate.ToolCall{
			{ID: "toolu_1", Name: "weather", Arguments: `{"city":`}}}}},
		wantMessage: `Message 0 calls tool "weather" with arguments that are not a JSON object.`,
	}, {
		name: "arguments not an object",
		req: agate.ModelRequest{Messages: []agate.Message{{Role: "user", Content: "x"}, {Role: "assistant", ToolCalls: []agate.ToolCall{
			{ID: "toolu_1", Name: "weather", Arguments: `["Paris"]`}}}}},
		wantMessage: `Message 1 calls tool "weather" with arguments that are not a JSON object.`,
	}, {
		name: "tool call without id",
		req: agate.ModelRequest{Messages: []agate.Message{{Role: "assistant", ToolCalls: []agate.ToolCall{
			{Name: "weather", Arguments: `{}`}}}}},
		wantMessage: "Message 0 has a tool call without an id or a name.",
	}, {
		name:        "tool result without id",
		req:         agate.ModelRequest{Messages: []agate.Message{{Role: "tool", Content: "18°C"}}},
		wantMessage: "Message 0 is a tool result without the id of its tool call.",
	}, {
		name:        "unknown role",
		req:         agate.ModelRequest{Messages: []agate.Message{{Role: "developer", Content: "x"}}},
		wantMessage: `Message 0 has role "developer"; want system, user, assistant or tool.`,
	}, {
		name:        "tool parameters not an object",
		req:         agate.ModelRequest{Tools: []agate.Tool{{Name: "a", Parameters: json.RawMessage(`"string"`)}}},
		wantMessage: `The parameters of tool "a" are not a JSON Schema object.`,
	}, {
		name:        "tool choice names no tool",
		req:         agate.ModelRequest{Tools: []agate.Tool{{Name: "a"}}, ToolChoice: "b"},
		wantMessage: `The tool choice "b" names no tool of the request.`,
	}, {
		name:        "tool required without tools",
		req:         agate.ModelRequest{ToolChoice: "required"},
		wantMessage: `The tool choice "required" needs tools, and the request has none.`,
	}, {
		name:        "NaN temperature",
		req:         agate.ModelRequest{Temperature: nan},
		wantMessage: "The model request could not be encoded; check its temperature and top_p.",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) { calls.Add(1) })
			_, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(t.Context(), tt.req, (&recorder{}).emit)
			if code(err) != agate.EInvalid {
				t.Fatalf("err = %v, want code %q", err, agate.EInvalid)
			}
			if diff := cmp.Diff(tt.wantMessage, agate.ErrorMessage(err)); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
			if n := calls.Load(); n != 0 {
				t.Errorf("%d requests sent", n)
			}
		})
	}
}

func TestBaseURLAsPasted(t *testing.T) {
	tests := []struct {
		base     string // appended to the server's URL
		wantPath string
	}{
		{"", "/v1/messages"},
		{"/", "/v1/messages"},
		{"/v1", "/v1/messages"},
		{"/v1/", "/v1/messages"},
		{"/v1//", "/v1/messages"},
		{"/v1/messages", "/v1/messages"},
		{"/v1/messages/", "/v1/messages"},
		{"/anthropic ", "/anthropic/v1/messages"},
		{"/anthropic/v1/messages", "/anthropic/v1/messages"},
	}
	for _, tt := range tests {
		t.Run(tt.base, func(t *testing.T) {
			srv, got := capture(t)
			c := anthropic.New(anthropic.Config{BaseURL: "  " + srv.URL + tt.base})
			if _, err := c.Generate(t.Context(), userRequest("hi"), (&recorder{}).emit); err != nil {
				t.Fatal(err)
			}
			if got.Path != tt.wantPath {
				t.Errorf("path = %q, want %q", got.Path, tt.wantPath)
			}
		})
	}
}

func TestUnusableBaseURL(t *testing.T) {
	for _, base := range []string{"api.anthropic.com", "localhost:8080/v1", "ftp://example.com", "http://", "http://user:secret@%zz"} {
		t.Run(base, func(t *testing.T) {
			_, err := anthropic.New(anthropic.Config{BaseURL: base}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
			if code(err) != agate.EUpstream || !strings.Contains(err.Error(), "base URL") {
				t.Fatalf("err = %v, want %s about the base URL", err, agate.EUpstream)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows the URL's password", err)
			}
		})
	}
}

func TestHTTPErrors(t *testing.T) {
	future := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	tests := []struct {
		name           string
		status         int
		header         map[string]string
		body           string
		wantCode       agate.Code
		wantMessage    string
		wantRetryAfter time.Duration // -1: about an hour
	}{{
		name:        "bad key",
		status:      401,
		header:      map[string]string{"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"},
		body:        `{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key ` + testKey + `"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}`,
		wantCode:    agate.EUpstreamAuth,
		wantMessage: "Anthropic refused the gateway's credentials (HTTP 401): invalid x-api-key [redacted]. Check the Anthropic API key.",
	}, {
		name:        "forbidden",
		status:      403,
		body:        `{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}`,
		wantCode:    agate.EUpstreamAuth,
		wantMessage: "Anthropic refused the gateway's credentials (HTTP 403): Your API key does not have permission to use the specified resource. Check the Anthropic API key.",
	}, {
		name:   "rate limited",
		status: 429,
		header: map[string]string{"retry-after": "7", "anthropic-ratelimit-input-tokens-remaining": "0"},
		body: `{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization of 50,000 input tokens per minute. ` +
			`For details, refer to: https://docs.claude.com/en/api/rate-limits."},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}`,
		wantCode: agate.EUpstreamRate,
		wantMessage: "Anthropic is rate limiting the gateway (HTTP 429): This request would exceed the rate limit for your organization of 50,000 input tokens per minute. " +
			"For details, refer to: https://docs.claude.com/en/api/rate-limits. Retry after 7 seconds.",
		wantRetryAfter: 7 * time.Second,
	}, {
		name:           "rate limited with a date",
		status:         429,
		header:         map[string]string{"retry-after": future.Format(http.TimeFormat)},
		body:           `{"type":"error","error":{"type":"rate_limit_error","message":"Slow down"}}`,
		wantCode:       agate.EUpstreamRate,
		wantMessage:    "Anthropic is rate limiting the gateway (HTTP 429): Slow down. Retry after " + future.Format(http.TimeFormat) + ".",
		wantRetryAfter: -1,
	}, {
		name:        "rate limited with a nonsense wait",
		status:      429,
		header:      map[string]string{"retry-after": "99999999999999"},
		body:        `{"type":"error","error":{"type":"rate_limit_error","message":"Slow down"}}`,
		wantCode:    agate.EUpstreamRate,
		wantMessage: "Anthropic is rate limiting the gateway (HTTP 429): Slow down.",
	}, {
		name:        "server error",
		status:      500,
		body:        `{"type":"error","error":{"type":"api_error","message":"Internal server error"}}`,
		wantCode:    agate.EUpstream,
		wantMessage: "Anthropic answered with an error (HTTP 500): Internal server error.",
	}, {
		name:        "overloaded",
		status:      529,
		body:        `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`,
		wantCode:    agate.EUpstream,
		wantMessage: "Anthropic is overloaded (HTTP 529): Overloaded. Try again shortly.",
	}, {
		name:           "unavailable with retry-after",
		status:         503,
		header:         map[string]string{"retry-after": "30"},
		body:           `{"type":"error","error":{"type":"api_error","message":"Service unavailable"}}`,
		wantCode:       agate.EUpstream,
		wantMessage:    "Anthropic answered with an error (HTTP 503): Service unavailable. Retry after 30 seconds.",
		wantRetryAfter: 30 * time.Second,
	}, {
		name:        "bad request",
		status:      400,
		body:        `{"type":"error","error":{"type":"invalid_request_error","message":"messages.1.content.0.tool_use.input: Input should be a valid dictionary"},"request_id":"req_1"}`,
		wantCode:    agate.EInvalid, // the caller's to fix: not retried, not a breaker failure
		wantMessage: "Anthropic refused the request (HTTP 400): messages.1.content.0.tool_use.input: Input should be a valid dictionary.",
	}, {
		name:        "unknown model",
		status:      404,
		body:        `{"type":"error","error":{"type":"not_found_error","message":"model: claude-9"}}`,
		wantCode:    agate.EUpstream,
		wantMessage: "Anthropic answered with an error (HTTP 404): model: claude-9. Check the Anthropic base URL and the model name.",
	}, {
		name:        "gateway timeout",
		status:      504,
		header:      map[string]string{"Content-Type": "text/html"},
		body:        "<html><body>504 Gateway Time-out</body></html>",
		wantCode:    agate.EUpstreamTimeout,
		wantMessage: "Anthropic timed out (HTTP 504). Try again.",
	}, {
		name:        "request timeout",
		status:      408,
		body:        `{"type":"error","error":{"type":"timeout_error","message":"Request timed out"}}`,
		wantCode:    agate.EUpstreamTimeout,
		wantMessage: "Anthropic timed out (HTTP 408): Request timed out. Try again.",
	}, {
		name:        "redirect",
		status:      301,
		header:      map[string]string{"Location": "https://elsewhere.example/v1/messages"},
		wantCode:    agate.EUpstream,
		wantMessage: "The Anthropic base URL redirects elsewhere (HTTP 301). Set it to the URL it redirects to.",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			c := anthropic.New(anthropic.Config{BaseURL: srv.URL, APIKey: testKey})
			var rec recorder
			_, err := c.Generate(t.Context(), userRequest("hi"), rec.emit)
			if got := code(err); got != tt.wantCode {
				t.Fatalf("err = %v, want code %q", err, tt.wantCode)
			}
			if diff := cmp.Diff(tt.wantMessage, agate.ErrorMessage(err)); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
			got := agate.RetryAfter(err)
			if tt.wantRetryAfter == -1 {
				if got < 50*time.Minute || got > time.Hour {
					t.Errorf("RetryAfter = %v, want about an hour", got)
				}
			} else if got != tt.wantRetryAfter {
				t.Errorf("RetryAfter = %v, want %v", got, tt.wantRetryAfter)
			}
			if strings.Contains(err.Error(), testKey) {
				t.Errorf("error %q shows the API key", err)
			}
			if len(rec.deltas) != 0 {
				t.Errorf("emitted %v on an error", rec.deltas)
			}
		})
	}
}

func TestMissingKeyIsNamed(t *testing.T) {
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(401)
		io.WriteString(w, `{"type":"error","error":{"type":"authentication_error","message":"x-api-key header is required"}}`)
	})
	_, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
	want := "Anthropic refused the gateway's credentials (HTTP 401): x-api-key header is required. No Anthropic API key is configured."
	if diff := cmp.Diff(want, agate.ErrorMessage(err)); diff != "" {
		t.Errorf("message (-want +got):\n%s", diff)
	}
}

func TestMalformedStreams(t *testing.T) {
	tests := []struct {
		name, contentType, body, wantMessage string
	}{{
		name:        "malformed event",
		contentType: "text/event-stream",
		body:        "event: content_block_delta\ndata: {\"type\":\n\n",
		wantMessage: "Anthropic sent a malformed stream event.",
	}, {
		name:        "event over 1 MiB",
		contentType: "text/event-stream",
		body:        "event: content_block_delta\ndata: " + strings.Repeat("x", 1<<20+1) + "\n\n",
		wantMessage: "Anthropic sent a stream event over 1 MiB; the reply was abandoned.",
	}, {
		name:        "web page",
		contentType: "text/html; charset=utf-8",
		body:        "<!doctype html><title>Welcome</title>",
		wantMessage: "The Anthropic base URL answered with a web page, not the Messages API; check it (for example https://api.anthropic.com).",
	}, {
		name:        "JSON error object",
		contentType: "application/json",
		body:        `{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}`,
		wantMessage: "Anthropic reported an error (invalid_request_error): max_tokens: Field required.",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				io.WriteString(w, tt.body)
			})
			_, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
			if code(err) != agate.EUpstream {
				t.Fatalf("err = %v, want code %q", err, agate.EUpstream)
			}
			if diff := cmp.Diff(tt.wantMessage, agate.ErrorMessage(err)); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNonStreamingJSONReply(t *testing.T) {
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"msg_01","type":"message","role":"assistant","model":"claude-x",
			"content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_1","name":"weather","input":{"city":"Paris"}},
				{"type":"tool_use","id":"toolu_2","name":"time","input":{}}],
			"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":20,"cache_read_input_tokens":5,"output_tokens":9}}`)
	})
	var rec recorder
	got, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), rec.emit)
	if err != nil {
		t.Fatal(err)
	}
	want := agate.Reply{
		Text: "Checking.",
		ToolCalls: []agate.ToolCall{
			{ID: "toolu_1", Name: "weather", Arguments: `{"city":"Paris"}`},
			{ID: "toolu_2", Name: "time", Arguments: "{}"},
		},
		Model: "claude-x", FinishReason: agate.FinishToolCalls,
		Usage: agate.Usage{PromptTokens: 25, CompletionTokens: 9, TotalTokens: 34},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reply (-want +got):\n%s", diff)
	}
	wantDeltas := []agate.Delta{text("Checking."), callStart(0, "toolu_1", "weather"), callArgs(0, `{"city":"Paris"}`), callStart(1, "toolu_2", "time")}
	if diff := cmp.Diff(wantDeltas, rec.deltas); diff != "" {
		t.Errorf("deltas (-want +got):\n%s", diff)
	}
}

func TestStalledStreamTimesOut(t *testing.T) {
	first := events(evStart, evText, evHel)
	tests := []struct {
		name     string
		cfg      anthropic.Config
		h        http.HandlerFunc
		wantText string
	}{{
		name:     "idle after an event",
		cfg:      anthropic.Config{IdleTimeout: 100 * time.Millisecond},
		h:        sse(true, first),
		wantText: "Hel",
	}, {
		name: "idle after the headers",
		cfg:  anthropic.Config{IdleTimeout: 100 * time.Millisecond},
		h:    sse(true),
	}, {
		name: "whole request",
		cfg:  anthropic.Config{Timeout: 100 * time.Millisecond, IdleTimeout: time.Hour},
		h:    func(w http.ResponseWriter, r *http.Request) { hang(r) }, // no headers
	}, {
		name:     "whole request while streaming",
		cfg:      anthropic.Config{Timeout: 200 * time.Millisecond, IdleTimeout: time.Hour},
		h:        sse(true, first),
		wantText: "Hel",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := serve(t, tt.h)
			cfg := tt.cfg
			cfg.BaseURL = srv.URL
			var rec recorder
			got, err := anthropic.New(cfg).Generate(t.Context(), userRequest("hi"), rec.emit)
			if code(err) != agate.EUpstreamTimeout {
				t.Fatalf("err = %v, want code %q", err, agate.EUpstreamTimeout)
			}
			if rec.text() != tt.wantText || got.Text != tt.wantText {
				t.Errorf("emitted %q, partial text %q; want %q", rec.text(), got.Text, tt.wantText)
			}
		})
	}
}

func TestStallAfterStopReasonKeepsReply(t *testing.T) {
	srv := serve(t, sse(true, events(evStart, evText, evHel, evDelta("end_turn"))))
	got, err := anthropic.New(anthropic.Config{BaseURL: srv.URL, IdleTimeout: 100 * time.Millisecond}).
		Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
	if err != nil {
		t.Fatal(err)
	}
	want := agate.Reply{Text: "Hel", Model: "claude-x", FinishReason: "stop", Usage: agate.Usage{PromptTokens: 3, CompletionTokens: 2, TotalTokens: 5}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reply (-want +got):\n%s", diff)
	}
}

func TestMessageStopEndsTheCall(t *testing.T) {
	// The server stalls after message_stop: the client must not wait for it.
	srv := serve(t, sse(true, events(evStart, evText, evHel, evDelta("end_turn"), evStop)))
	_, err := anthropic.New(anthropic.Config{BaseURL: srv.URL, IdleTimeout: time.Hour}).
		Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
	if err != nil {
		t.Fatal(err)
	}
}

func TestCallerCancels(t *testing.T) {
	first := events(evStart, evText, evHel)

	t.Run("mid-stream", func(t *testing.T) {
		srv := serve(t, sse(true, first))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		got, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(ctx, userRequest("hi"), func(agate.Delta) error {
			cancel()
			return nil
		})
		if !errors.Is(err, context.Canceled) || code(err) != "" {
			t.Fatalf("err = %v, want context.Canceled without an agate code", err)
		}
		if got.Text != "Hel" {
			t.Errorf("partial text = %q", got.Text)
		}
	})
	t.Run("before the headers", func(t *testing.T) {
		arrived := make(chan struct{})
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
			close(arrived)
			hang(r)
		})
		ctx, cancel := context.WithCancel(t.Context())
		go func() {
			<-arrived
			cancel()
		}()
		_, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(ctx, userRequest("hi"), (&recorder{}).emit)
		if !errors.Is(err, context.Canceled) || code(err) != "" {
			t.Fatalf("err = %v, want context.Canceled without an agate code", err)
		}
	})
	t.Run("already cancelled", func(t *testing.T) {
		var calls atomic.Int32
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) { calls.Add(1) })
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(ctx, userRequest("hi"), (&recorder{}).emit)
		if !errors.Is(err, context.Canceled) || code(err) != "" || calls.Load() != 0 {
			t.Fatalf("err = %v after %d calls, want context.Canceled and no call", err, calls.Load())
		}
	})
}

func TestEmitErrorStops(t *testing.T) {
	srv := serve(t, sse(false, transcript(t, "tool_use.sse")))
	errStop := errors.New("client went away")
	var calls int
	got, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), func(d agate.Delta) error {
		calls++
		if d.ToolCall != nil {
			return errStop
		}
		return nil
	})
	if err != errStop {
		t.Fatalf("err = %v, want the emit error itself", err)
	}
	want := []agate.ToolCall{{ID: "toolu_01T1x1fJ34qAmk2tNTrN7Up6", Name: "get_weather", Arguments: "{}"}}
	if calls != 3 || got.Text != "Okay, let's check the weather and the time:" {
		t.Errorf("emit called %d times, text %q; want 3 calls and the whole text", calls, got.Text)
	}
	if diff := cmp.Diff(want, got.ToolCalls); diff != "" {
		t.Errorf("partial tool calls (-want +got):\n%s", diff)
	}
}

func TestUnreachableProvider(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = anthropic.New(anthropic.Config{BaseURL: "http://" + addr}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
	if code(err) != agate.EUpstream || !strings.Contains(agate.ErrorMessage(err), "unreachable") {
		t.Fatalf("err = %v, want %s saying Anthropic is unreachable", err, agate.EUpstream)
	}
}

func TestCountTokens(t *testing.T) {
	t.Run("counts", func(t *testing.T) {
		var got sent
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			got = sent{Method: r.Method, Path: r.URL.Path, Header: map[string]string{"X-Api-Key": r.Header.Get("X-Api-Key")}, Body: body}
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"input_tokens":2095}`)
		})
		req := richRequest()
		req.Messages = req.Messages[:2]
		req.Tools = req.Tools[1:]
		n, err := anthropic.New(anthropic.Config{BaseURL: srv.URL + "/v1", APIKey: testKey}).CountTokens(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		if n != 2095 {
			t.Errorf("count = %d, want 2095", n)
		}
		want := sent{
			Method: "POST", Path: "/v1/messages/count_tokens", Header: map[string]string{"X-Api-Key": testKey},
			Body: []byte(`{"model":"claude-sonnet-4-5","system":"You are terse.",` +
				`"messages":[{"role":"user","content":[{"type":"text","text":"What's the weather in Paris, and the time?"}]}],` +
				`"tools":[{"name":"get_time","input_schema":{"type":"object"}}],"tool_choice":{"type":"auto"}}`),
		}
		if diff := cmp.Diff(want, got, cmp.Transformer("json", func(b []byte) any { return decode(t, b) })); diff != "" {
			t.Errorf("request (-want +got):\n%s", diff)
		}
	})
	t.Run("errors as Generate", func(t *testing.T) {
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("retry-after", "3")
			w.WriteHeader(429)
			io.WriteString(w, `{"type":"error","error":{"type":"rate_limit_error","message":"Slow down"}}`)
		})
		_, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).CountTokens(t.Context(), userRequest("hi"))
		if code(err) != agate.EUpstreamRate || agate.RetryAfter(err) != 3*time.Second {
			t.Fatalf("err = %v, want %s with RetryAfter 3s", err, agate.EUpstreamRate)
		}
	})
	t.Run("not a count", func(t *testing.T) {
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"tokens":1}`) })
		_, err := anthropic.New(anthropic.Config{BaseURL: srv.URL}).CountTokens(t.Context(), userRequest("hi"))
		if code(err) != agate.EUpstream {
			t.Fatalf("err = %v, want %s", err, agate.EUpstream)
		}
	})
}

func TestConcurrentGenerate(t *testing.T) {
	srv := serve(t, sse(false, transcript(t, "tool_use.sse")))
	c := anthropic.New(anthropic.Config{BaseURL: srv.URL})
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			got, err := c.Generate(t.Context(), userRequest("hi"), func(agate.Delta) error { return nil })
			if err == nil && len(got.ToolCalls) != 2 {
				err = errors.New("wrong tool calls")
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
