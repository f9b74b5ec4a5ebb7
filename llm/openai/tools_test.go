package openai_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/openai"
	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// fold assembles tool-call deltas as a consumer of Generate would: by Index, ID and Name
// when first given, Arguments appended.
func fold(deltas []agate.ToolCallDelta) []agate.ToolCall {
	var calls []agate.ToolCall
	for _, d := range deltas {
		for len(calls) <= d.Index {
			calls = append(calls, agate.ToolCall{})
		}
		c := &calls[d.Index]
		if d.ID != "" {
			c.ID = d.ID
		}
		if d.Name != "" {
			c.Name = d.Name
		}
		c.Arguments += d.Arguments
	}
	return calls
}

func TestToolCallsFromTranscripts(t *testing.T) {
	tests := []struct {
		file      string
		wantText  []string
		wantCalls []agate.ToolCallDelta // nil: only the count is checked
		wantCount int
		wantReply agate.Reply
	}{{
		// OpenAI, two parallel calls; the first piece of each has id, type, name and
		// empty arguments; the arguments follow in many pieces.
		file:      "tools_stream.sse",
		wantCount: 2 + 12 + 8,
		wantReply: agate.Reply{
			Model: "gpt-4o-2024-08-06", FinishReason: agate.FinishToolCalls,
			ToolCalls: []agate.ToolCall{
				{ID: "call_Wq3bX1Lr8fJd2Tz5", Name: "get_weather", Arguments: `{"city":"São Paulo","unit":"celsius"}`},
				{ID: "call_9hKc0mPq4sVn7Ye2", Name: "get_time", Arguments: `{"timezone":"America/Sao_Paulo"}`},
			},
			Usage: agate.Usage{PromptTokens: 112, CompletionTokens: 58, TotalTokens: 170},
		},
	}, {
		// Text first, then the pieces of two calls alternating, the last two in one chunk
		// in reverse order.
		file:     "tools_interleaved.sse",
		wantText: []string{"I'll look both up."},
		wantCalls: []agate.ToolCallDelta{
			{Index: 0, ID: "call_a1", Name: "search"},
			{Index: 1, ID: "call_b2", Name: "lookup"},
			{Index: 0, Arguments: `{"q":`},
			{Index: 1, Arguments: `{"id"`},
			{Index: 0, Arguments: `"go `},
			{Index: 1, Arguments: `:"RFC`},
			{Index: 0, Arguments: `generics"`},
			{Index: 1, Arguments: ` 9110"`},
			{Index: 0, Arguments: `,"limit"`},
			{Index: 1, Arguments: `}`},
			{Index: 0, Arguments: `:3}`},
		},
		wantReply: agate.Reply{
			Text: "I'll look both up.", Model: "qwen/qwen3-235b-a22b", FinishReason: agate.FinishToolCalls,
			ToolCalls: []agate.ToolCall{
				{ID: "call_a1", Name: "search", Arguments: `{"q":"go generics","limit":3}`},
				{ID: "call_b2", Name: "lookup", Arguments: `{"id":"RFC 9110"}`},
			},
			Usage: agate.Usage{PromptTokens: 80, CompletionTokens: 41, TotalTokens: 121},
		},
	}, {
		// No index anywhere; an id on each call's first piece (and once more later); the
		// finish reason is "stop".
		file: "tools_no_index.sse",
		wantCalls: []agate.ToolCallDelta{
			{Index: 0, ID: "call_x7", Name: "get_weather"},
			{Index: 0, Arguments: `{"city":`},
			{Index: 0, Arguments: `"Oslo"`},
			{Index: 0, Arguments: `}`},
			{Index: 1, ID: "call_y8", Name: "get_weather", Arguments: `{"city":`},
			{Index: 1, Arguments: `"Bergen"`},
			{Index: 1, Arguments: `}`},
		},
		wantReply: agate.Reply{
			Model: "local-llm", FinishReason: agate.FinishToolCalls,
			ToolCalls: []agate.ToolCall{
				{ID: "call_x7", Name: "get_weather", Arguments: `{"city":"Oslo"}`},
				{ID: "call_y8", Name: "get_weather", Arguments: `{"city":"Bergen"}`},
			},
			Usage: agate.Usage{PromptTokens: 95, CompletionTokens: 30, TotalTokens: 125},
		},
	}}
	for _, tt := range tests {
		raw := transcript(t, tt.file)
		for name, pieces := range map[string][]string{
			"whole":        {raw},
			"byte by byte": bytesOf(raw),
			"CRLF":         {strings.ReplaceAll(raw, "\n", "\r\n")},
		} {
			t.Run(tt.file+"/"+name, func(t *testing.T) {
				srv := serve(t, sse(false, pieces...))
				var rec recorder
				got, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), rec.emit)
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(tt.wantReply, got); diff != "" {
					t.Errorf("reply (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tt.wantText, rec.deltas); diff != "" {
					t.Errorf("text deltas (-want +got):\n%s", diff)
				}
				if tt.wantCalls != nil {
					if diff := cmp.Diff(tt.wantCalls, rec.calls); diff != "" {
						t.Errorf("tool-call deltas (-want +got):\n%s", diff)
					}
				} else if len(rec.calls) != tt.wantCount {
					t.Errorf("%d tool-call deltas, want %d", len(rec.calls), tt.wantCount)
				}
				if diff := cmp.Diff(got.ToolCalls, fold(rec.calls)); diff != "" {
					t.Errorf("deltas do not fold into the reply's calls (-reply +folded):\n%s", diff)
				}
			})
		}
	}
}

func TestNonStreamingToolCalls(t *testing.T) {
	body := transcript(t, "tools.json")
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	})
	var rec recorder
	got, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), rec.emit)
	if err != nil {
		t.Fatal(err)
	}
	want := agate.Reply{
		Model: "gpt-4o-2024-08-06", FinishReason: agate.FinishToolCalls,
		ToolCalls: []agate.ToolCall{
			{ID: "call_Wq3bX1Lr8fJd2Tz5", Name: "get_weather", Arguments: `{"city":"São Paulo","unit":"celsius"}`},
			{ID: "call_9hKc0mPq4sVn7Ye2", Name: "get_time", Arguments: `{"timezone":"America/Sao_Paulo"}`},
		},
		Usage: agate.Usage{PromptTokens: 112, CompletionTokens: 58, TotalTokens: 170},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reply (-want +got):\n%s", diff)
	}
	wantDeltas := []agate.ToolCallDelta{
		{Index: 0, ID: "call_Wq3bX1Lr8fJd2Tz5", Name: "get_weather", Arguments: `{"city":"São Paulo","unit":"celsius"}`},
		{Index: 1, ID: "call_9hKc0mPq4sVn7Ye2", Name: "get_time", Arguments: `{"timezone":"America/Sao_Paulo"}`},
	}
	if diff := cmp.Diff(wantDeltas, rec.calls); diff != "" {
		t.Errorf("tool-call deltas (-want +got):\n%s", diff)
	}
	if len(rec.deltas) != 0 {
		t.Errorf("text deltas %q for a reply without text", rec.deltas)
	}
}

// chunks renders choice deltas (JSON objects) and a finish reason as an event stream.
func chunks(finish string, deltas ...string) string {
	var b strings.Builder
	for _, d := range deltas {
		b.WriteString(`data: {"model":"m","choices":[{"index":0,"delta":` + d + `,"finish_reason":null}]}` + "\n\n")
	}
	b.WriteString(`data: {"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"` + finish + `"}]}` + "\n\n")
	return b.String() + "data: [DONE]\n\n"
}

func TestToolCallPiecesAreNeverMisassigned(t *testing.T) {
	tests := []struct {
		name       string
		stream     string
		wantCalls  []agate.ToolCall
		wantFinish string
	}{{
		name: "every call numbered 0, told apart by id",
		stream: chunks("tool_calls",
			`{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":""}}]}`,
			`{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\":1}"}}]}`,
			`{"tool_calls":[{"index":0,"id":"b","type":"function","function":{"name":"g","arguments":""}}]}`,
			`{"tool_calls":[{"index":0,"function":{"arguments":"{\"y\":2}"}}]}`),
		wantCalls:  []agate.ToolCall{{ID: "a", Name: "f", Arguments: `{"x":1}`}, {ID: "b", Name: "g", Arguments: `{"y":2}`}},
		wantFinish: agate.FinishToolCalls,
	}, {
		name: "id and name repeated on every piece, interleaved without index",
		stream: chunks("tool_calls",
			`{"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{\"x\""}}]}`,
			`{"tool_calls":[{"id":"b","type":"function","function":{"name":"g","arguments":"{\"y\""}}]}`,
			`{"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":":1}"}}]}`,
			`{"tool_calls":[{"id":"b","type":"function","function":{"name":"g","arguments":":2}"}}]}`),
		wantCalls:  []agate.ToolCall{{ID: "a", Name: "f", Arguments: `{"x":1}`}, {ID: "b", Name: "g", Arguments: `{"y":2}`}},
		wantFinish: agate.FinishToolCalls,
	}, {
		name: "a fresh id on every piece",
		stream: chunks("tool_calls",
			`{"tool_calls":[{"index":0,"id":"call_7a","type":"function","function":{"name":"f","arguments":""}}]}`,
			`{"tool_calls":[{"index":0,"id":"call_7b","type":"function","function":{"arguments":"{\"x\":"}}]}`,
			`{"tool_calls":[{"index":0,"id":"call_7c","type":"function","function":{"arguments":"1}"}}]}`),
		wantCalls:  []agate.ToolCall{{ID: "call_7a", Name: "f", Arguments: `{"x":1}`}},
		wantFinish: agate.FinishToolCalls,
	}, {
		name: "numbered from 1",
		stream: chunks("tool_calls",
			`{"content":"Sure."}`,
			`{"tool_calls":[{"index":1,"id":"a","type":"function","function":{"name":"f","arguments":"{}"}}]}`,
			`{"tool_calls":[{"index":2,"id":"b","type":"function","function":{"name":"g"}}]}`,
			`{"tool_calls":[{"index":2,"function":{"arguments":"{}"}}]}`),
		wantCalls:  []agate.ToolCall{{ID: "a", Name: "f", Arguments: `{}`}, {ID: "b", Name: "g", Arguments: `{}`}},
		wantFinish: agate.FinishToolCalls,
	}, {
		name: "no id, no index",
		stream: chunks("tool_calls",
			`{"tool_calls":[{"function":{"name":"f","arguments":"{\"x\":"}}]}`,
			`{"tool_calls":[{"function":{"arguments":"1}"}}]}`),
		wantCalls:  []agate.ToolCall{{Name: "f", Arguments: `{"x":1}`}},
		wantFinish: agate.FinishToolCalls,
	}, {
		name: "id arrives after the first piece",
		stream: chunks("tool_calls",
			`{"tool_calls":[{"index":0,"function":{"name":"f","arguments":""}}]}`,
			`{"tool_calls":[{"index":0,"id":"a","function":{"arguments":"{}"}}]}`),
		wantCalls:  []agate.ToolCall{{ID: "a", Name: "f", Arguments: `{}`}},
		wantFinish: agate.FinishToolCalls,
	}, {
		name: "arguments sent as an object",
		stream: chunks("tool_calls",
			`{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":{"x":[1, 2]}}}]}`),
		wantCalls:  []agate.ToolCall{{ID: "a", Name: "f", Arguments: `{"x":[1, 2]}`}},
		wantFinish: agate.FinishToolCalls,
	}, {
		name: "legacy function_call",
		stream: chunks("function_call",
			`{"role":"assistant","content":null,"function_call":{"name":"f","arguments":""}}`,
			`{"function_call":{"arguments":"{\"x\":"}}`,
			`{"function_call":{"arguments":"1}"}}`),
		wantCalls:  []agate.ToolCall{{Name: "f", Arguments: `{"x":1}`}},
		wantFinish: agate.FinishToolCalls,
	}, {
		name:       "length cut a call short",
		stream:     chunks("length", `{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":"{\"x\":"}}]}`),
		wantCalls:  []agate.ToolCall{{ID: "a", Name: "f", Arguments: `{"x":`}},
		wantFinish: agate.FinishLength,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := serve(t, sse(false, tt.stream))
			var rec recorder
			got, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), rec.emit)
			if err != nil {
				t.Fatal(err)
			}
			// A call the provider sent without an id gets a generated one.
			calls := slices.Clone(got.ToolCalls)
			for i := range calls {
				if i < len(tt.wantCalls) && tt.wantCalls[i].ID == "" {
					if !strings.HasPrefix(calls[i].ID, "call_") {
						t.Errorf("call %d without a provider id got id %q, want a generated call_…", i, calls[i].ID)
					}
					calls[i].ID = ""
				}
			}
			if diff := cmp.Diff(tt.wantCalls, calls); diff != "" {
				t.Errorf("tool calls (-want +got):\n%s", diff)
			}
			if got.FinishReason != tt.wantFinish {
				t.Errorf("finish reason = %q, want %q", got.FinishReason, tt.wantFinish)
			}
			if diff := cmp.Diff(got.ToolCalls, fold(rec.calls)); diff != "" {
				t.Errorf("deltas do not fold into the reply's calls (-reply +folded):\n%s", diff)
			}
		})
	}
}

// capture answers every request with an empty stream and keeps the last request's headers
// and body.
type capture struct {
	header http.Header
	query  string
	body   []byte
}

func (c *capture) handler(t *testing.T) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("request body: %v", err)
		}
		c.header, c.query, c.body = r.Header.Clone(), r.URL.RawQuery, b
		sse(false, "data: [DONE]\n\n")(w, r)
	}
}

func TestRequestWithToolsMatchesGolden(t *testing.T) {
	temp, topP := 0.2, 0.9
	req := agate.ModelRequest{
		Model:       "gpt-4.1",
		MaxTokens:   1024,
		Temperature: &temp,
		TopP:        &topP,
		Stop:        []string{"\n\nUser:"},
		Tools: []agate.Tool{{
			Name:        "get_weather",
			Description: "Current weather of a city.",
			Parameters: json.RawMessage(`{
				"type": "object",
				"properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
				"required": ["city"]
			}`),
		}, {
			Name: "get_time", // no description, no parameters
		}},
		ToolChoice:     "get_weather",
		ResponseFormat: json.RawMessage(`{"type":"json_schema","json_schema":{"name":"answer","strict":true,"schema":{"type":"object","properties":{"text":{"type":"string"}},"required":["text"],"additionalProperties":false}}}`),
		Messages: []agate.Message{
			{Role: agate.RoleSystem, Content: "You are terse."},
			{Role: agate.RoleUser, Content: "Weather and time in São Paulo? <b>now</b>"},
			{Role: agate.RoleAssistant, ToolCalls: []agate.ToolCall{
				{ID: "call_1", Name: "get_weather", Arguments: `{"city":"São Paulo"}`},
				{ID: "call_2", Name: "get_time", Arguments: `{}`},
			}},
			{Role: agate.RoleTool, ToolCallID: "call_1", Content: `{"temp_c":24}`},
			{Role: agate.RoleTool, ToolCallID: "call_2", Content: "14:05"},
			{Role: agate.RoleAssistant, Content: "Checking once more.", ToolCalls: []agate.ToolCall{
				{ID: "call_3", Name: "get_weather", Arguments: `{"city":"Santos"}`},
			}},
			{Role: agate.RoleTool, ToolCallID: "call_3", Content: ""},
		},
		Extra: map[string]json.RawMessage{
			"model":               json.RawMessage(`"gpt-hijack"`), // the adapter's own: ignored
			"stream":              json.RawMessage(`false`),        // ignored
			"stream_options":      json.RawMessage(`{"include_usage":false}`),
			"tools":               json.RawMessage(`[]`),
			"max_tokens":          json.RawMessage(`5`),
			"parallel_tool_calls": json.RawMessage(`false`),
			"seed":                json.RawMessage(`42`),
			"user":                json.RawMessage(`"tenant-7"`),
			"logit_bias":          json.RawMessage(`{ "50256" : -100 }`),
			"metadata":            json.RawMessage(`{"trace":"a<b>&c"}`),
		},
	}
	var got capture
	srv := serve(t, got.handler(t))
	if _, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(t.Context(), req, (&recorder{}).emit); err != nil {
		t.Fatal(err)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, got.body, "", "  "); err != nil {
		t.Fatalf("request body is not JSON: %v\n%s", err, got.body)
	}
	pretty.WriteByte('\n')
	golden := filepath.Join("testdata", "request_tools.json")
	if *update {
		if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), pretty.String()); diff != "" {
		t.Errorf("request body (-%s +got):\n%s", golden, diff)
	}
}

const absent = "<absent>"

func TestExtraAddsButNeverReplaces(t *testing.T) {
	temp := 0.5
	tests := []struct {
		name string
		cfg  openai.Config
		req  agate.ModelRequest
		want map[string]any // the members checked; absent for none
	}{{
		name: "adapter fields win",
		req: agate.ModelRequest{Model: "m", Temperature: &temp, Extra: map[string]json.RawMessage{
			"model": json.RawMessage(`"x"`), "messages": json.RawMessage(`[]`), "stream": json.RawMessage(`false`),
			"temperature": json.RawMessage(`2`), "top_p": json.RawMessage(`0.1`),
		}},
		want: map[string]any{"model": "m", "stream": true, "temperature": 0.5, "top_p": 0.1, "messages": []any{}},
	}, {
		name: "max_tokens by default",
		req:  agate.ModelRequest{Model: "m", MaxTokens: 100},
		want: map[string]any{"max_tokens": 100.0, "max_completion_tokens": absent},
	}, {
		name: "max_completion_tokens when configured",
		cfg:  openai.Config{MaxTokensField: "max_completion_tokens"},
		req:  agate.ModelRequest{Model: "m", MaxTokens: 100, Extra: map[string]json.RawMessage{"max_tokens": json.RawMessage(`7`)}},
		want: map[string]any{"max_completion_tokens": 100.0, "max_tokens": absent},
	}, {
		name: "max_completion_tokens of Extra passes untouched",
		req:  agate.ModelRequest{Model: "m", MaxTokens: 100, Extra: map[string]json.RawMessage{"max_completion_tokens": json.RawMessage(`4096`)}},
		want: map[string]any{"max_completion_tokens": 4096.0, "max_tokens": absent},
	}, {
		name: "max_completion_tokens of Extra wins over the configured field",
		cfg:  openai.Config{MaxTokensField: "max_completion_tokens"},
		req:  agate.ModelRequest{Model: "m", MaxTokens: 100, Extra: map[string]json.RawMessage{"max_completion_tokens": json.RawMessage(`4096`)}},
		want: map[string]any{"max_completion_tokens": 4096.0, "max_tokens": absent},
	}, {
		name: "tool_choice modes and nil Extra value",
		req: agate.ModelRequest{Model: "m", ToolChoice: "required", Tools: []agate.Tool{{Name: "f"}},
			Extra: map[string]json.RawMessage{"reasoning_effort": nil}},
		want: map[string]any{
			"tool_choice":      "required",
			"tools":            []any{map[string]any{"type": "function", "function": map[string]any{"name": "f"}}},
			"reasoning_effort": nil,
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c capture
			srv := serve(t, c.handler(t))
			cfg := tt.cfg
			cfg.BaseURL = srv.URL
			if _, err := openai.New(cfg).Generate(t.Context(), tt.req, (&recorder{}).emit); err != nil {
				t.Fatal(err)
			}
			var body map[string]any
			if err := json.Unmarshal(c.body, &body); err != nil {
				t.Fatal(err)
			}
			got := map[string]any{}
			for k := range tt.want {
				v, ok := body[k]
				if !ok {
					v = absent
				}
				got[k] = v
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("request members (-want +got):\n%s\nbody: %s", diff, c.body)
			}
		})
	}
}

func TestRequestsThatCannotBeSent(t *testing.T) {
	tests := []struct {
		name        string
		cfg         openai.Config
		req         agate.ModelRequest
		wantCode    agate.Code
		wantMessage string
	}{{
		name:        "Extra value not JSON",
		req:         agate.ModelRequest{Extra: map[string]json.RawMessage{"seed": json.RawMessage(`{oops`)}},
		wantCode:    agate.EInvalid,
		wantMessage: `The request field "seed" is not valid JSON.`,
	}, {
		name:        "tool parameters not JSON",
		req:         agate.ModelRequest{Tools: []agate.Tool{{Name: "f", Parameters: json.RawMessage(`{"type":`)}}},
		wantCode:    agate.EInvalid,
		wantMessage: `The parameters of tool "f" are not valid JSON.`,
	}, {
		name:        "response_format not JSON",
		req:         agate.ModelRequest{ResponseFormat: json.RawMessage(`json`)},
		wantCode:    agate.EInvalid,
		wantMessage: "The response_format of the model request is not valid JSON.",
	}, {
		name:        "unknown max tokens field",
		cfg:         openai.Config{MaxTokensField: "max_new_tokens"},
		wantCode:    agate.EUpstream,
		wantMessage: `The LLM max tokens field must be max_tokens or max_completion_tokens, not "max_new_tokens".`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) { calls++ })
			cfg := tt.cfg
			cfg.BaseURL = srv.URL
			_, err := openai.New(cfg).Generate(t.Context(), tt.req, (&recorder{}).emit)
			if code(err) != tt.wantCode || calls != 0 {
				t.Fatalf("err = %v after %d calls, want code %q and no call", err, calls, tt.wantCode)
			}
			if diff := cmp.Diff(tt.wantMessage, agate.ErrorMessage(err)); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAzureDeploymentGetsAPIKeyHeader(t *testing.T) {
	tests := []struct {
		name      string
		base      string
		headers   map[string]string
		wantAuth  string
		wantKey   string
		wantQuery string
	}{{
		name:      "deployment with api-version",
		base:      "https://my-res.openai.azure.com/openai/deployments/gpt-4o/?api-version=2024-10-21",
		wantKey:   testKey,
		wantQuery: "api-version=2024-10-21",
	}, {
		name:      "pasted with /chat/completions",
		base:      "https://my-res.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
		wantKey:   testKey,
		wantQuery: "api-version=2024-10-21",
	}, {
		name:     "Azure without api-version is the v1 API: bearer",
		base:     "https://my-res.openai.azure.com/openai/v1",
		wantAuth: "Bearer " + testKey,
	}, {
		name:      "api-version on another host: bearer",
		base:      "https://gateway.example/openai?api-version=1",
		wantAuth:  "Bearer " + testKey,
		wantQuery: "api-version=1",
	}, {
		name:      "Headers still override",
		base:      "https://my-res.openai.azure.com/openai/deployments/gpt-4o?api-version=2024-10-21",
		headers:   map[string]string{"Authorization": "Bearer entra-token", "api-key": ""},
		wantAuth:  "Bearer entra-token",
		wantQuery: "api-version=2024-10-21",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c capture
			srv := serve(t, c.handler(t))
			// Every host name leads to the test server, over plain HTTP.
			hc := &http.Client{Transport: &http.Transport{
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, srv.Listener.Addr().String())
				},
			}}
			base := strings.Replace(tt.base, "https://", "http://", 1)
			cl := openai.New(openai.Config{BaseURL: base, APIKey: testKey, HTTPClient: hc, Headers: tt.headers})
			if _, err := cl.Generate(t.Context(), userRequest("hi"), (&recorder{}).emit); err != nil {
				t.Fatal(err)
			}
			got := []string{c.header.Get("Authorization"), c.header.Get("api-key"), c.query}
			if diff := cmp.Diff([]string{tt.wantAuth, tt.wantKey, tt.wantQuery}, got); diff != "" {
				t.Errorf("Authorization, api-key, query (-want +got):\n%s", diff)
			}
		})
	}
}
