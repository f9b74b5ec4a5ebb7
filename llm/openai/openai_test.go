package openai_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/openai"
	"github.com/agate-gw/agate/turn"
	"github.com/google/go-cmp/cmp"
)

var _ turn.Model = (*openai.Client)(nil)

const testKey = "sk-test-5ecret-KEY-0123456789"

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
		w.Header().Set("Content-Type", "text/event-stream")
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
	io.Copy(io.Discard, r.Body) // so that the server notices when the client goes away
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

// recorder collects the deltas emitted to it: text in deltas, tool-call pieces in calls.
type recorder struct {
	deltas []string
	calls  []agate.ToolCallDelta
}

func (r *recorder) emit(d agate.Delta) error {
	if d.Text != "" || d.ToolCall == nil {
		r.deltas = append(r.deltas, d.Text)
	}
	if d.ToolCall != nil {
		r.calls = append(r.calls, *d.ToolCall)
	}
	return nil
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

func TestStreamsReplyFromTranscripts(t *testing.T) {
	tests := []struct {
		file       string
		wantDeltas []string
		wantReply  agate.Reply
		wantCode   agate.Code
	}{{
		file:       "stream.sse",
		wantDeltas: []string{"Hello", ",", " wörld! 👋"},
		wantReply: agate.Reply{
			Text: "Hello, wörld! 👋", Model: "gpt-4o-mini-2024-07-18", FinishReason: "stop",
			Usage: agate.Usage{PromptTokens: 19, CompletionTokens: 5, TotalTokens: 24},
		},
	}, {
		file:       "keepalive.sse",
		wantDeltas: []string{"Hi", " there"},
		wantReply: agate.Reply{
			Text: "Hi there", Model: "gpt-4o-mini-2024-07-18", FinishReason: "length",
			Usage: agate.Usage{PromptTokens: 7, CompletionTokens: 2, TotalTokens: 9},
		},
	}, {
		file:       "error_midstream.sse",
		wantDeltas: []string{"Once upon"},
		wantReply:  agate.Reply{Text: "Once upon", Model: "gpt-4o-mini-2024-07-18"},
		wantCode:   agate.EUpstream,
	}, {
		file:       "truncated.sse",
		wantDeltas: []string{"Once upon", " a time"},
		wantReply:  agate.Reply{Text: "Once upon a time", Model: "gpt-4o-mini-2024-07-18"},
		wantCode:   agate.EStreamTruncated,
	}, {
		// A finish_reason makes the reply complete even if [DONE] never comes.
		file:       "finish_without_done.sse",
		wantDeltas: []string{"Done"},
		wantReply:  agate.Reply{Text: "Done", Model: "gpt-4o-mini-2024-07-18", FinishReason: "stop"},
	}, {
		file:      "empty.sse",
		wantReply: agate.Reply{Model: "m"},
		wantCode:  agate.EStreamTruncated,
	}}
	for _, tt := range tests {
		raw := transcript(t, tt.file)
		variants := map[string][]string{
			"whole":         {raw},
			"byte by byte":  bytesOf(raw),
			"CRLF":          {strings.ReplaceAll(raw, "\n", "\r\n")},
			"CRLF by bytes": bytesOf(strings.ReplaceAll(raw, "\n", "\r\n")),
			"CR":            {strings.ReplaceAll(raw, "\n", "\r")},
		}
		for name, pieces := range variants {
			t.Run(tt.file+"/"+name, func(t *testing.T) {
				srv := serve(t, sse(false, pieces...))
				c := openai.New(openai.Config{BaseURL: srv.URL, Model: "m"})
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

func TestStreamSplitAtAwkwardPlaces(t *testing.T) {
	chunk := func(text string) string {
		return `{"id":"c1","object":"chat.completion.chunk","model":"gpt-x","choices":[{"index":0,"delta":{"content":"` + text + `"},"finish_reason":null}],"usage":null}`
	}
	pieces := []string{
		"da", "ta", ":", " " + chunk("A")[:20], chunk("A")[20:] + "\r", "\n\r", "\n", // mid-"data:", mid-JSON, between \r and \n
		": keep", "-alive\r\n\r\n", // a comment split in two
		"data: " + chunk("B") + "\n", "\n",
		"data: " + chunk("C") + "\r\n\r", "\n",
		`data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-x","choices":[{"index":0,"delta":{},"finish_reason":"st`,
		`op"}],"usage":null}` + "\n\n",
		`data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}}` + "\n\n",
		"data: [DO", "NE]\r", "\n\r\n",
	}
	srv := serve(t, sse(true, pieces...)) // the server stalls after [DONE]: the client must not wait
	c := openai.New(openai.Config{BaseURL: srv.URL, IdleTimeout: time.Hour})
	var rec recorder
	got, err := c.Generate(t.Context(), userRequest("hi"), rec.emit)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"A", "B", "C"}, rec.deltas); diff != "" {
		t.Errorf("deltas (-want +got):\n%s", diff)
	}
	want := agate.Reply{Text: "ABC", Model: "gpt-x", FinishReason: "stop", Usage: agate.Usage{PromptTokens: 3, CompletionTokens: 3, TotalTokens: 6}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reply (-want +got):\n%s", diff)
	}
}

func TestRequestAsSent(t *testing.T) {
	type sent struct {
		Method, Path string
		Header       map[string]string
		Body         map[string]any
	}
	temp := 0.25
	tests := []struct {
		name string
		cfg  openai.Config
		req  agate.ModelRequest
		want sent
	}{{
		name: "defaults from config",
		cfg:  openai.Config{APIKey: testKey, Model: "gpt-4o-mini"},
		req: agate.ModelRequest{Messages: []agate.Message{
			{Role: agate.RoleSystem, Content: "Be brief."},
			{Role: agate.RoleUser, Content: "Hi"},
		}},
		want: sent{
			Method: "POST", Path: "/v1/chat/completions",
			Header: map[string]string{
				"Authorization": "Bearer " + testKey,
				"Content-Type":  "application/json",
				"Accept":        "text/event-stream",
			},
			Body: map[string]any{
				"model": "gpt-4o-mini",
				"messages": []any{
					map[string]any{"role": "system", "content": "Be brief."},
					map[string]any{"role": "user", "content": "Hi"},
				},
				"stream":         true,
				"stream_options": map[string]any{"include_usage": true},
			},
		},
	}, {
		name: "request overrides, extra headers, no key",
		cfg:  openai.Config{Model: "gpt-4o-mini", Headers: map[string]string{"OpenAI-Organization": "org-1", "accept": "*/*"}},
		req: agate.ModelRequest{
			Model: "o-large", MaxTokens: 256, Temperature: &temp,
			Messages: []agate.Message{{Role: agate.RoleUser, Content: "Hi"}},
		},
		want: sent{
			Method: "POST", Path: "/v1/chat/completions",
			Header: map[string]string{
				"Authorization":       "",
				"Content-Type":        "application/json",
				"Accept":              "*/*",
				"Openai-Organization": "org-1",
			},
			Body: map[string]any{
				"model":          "o-large",
				"messages":       []any{map[string]any{"role": "user", "content": "Hi"}},
				"stream":         true,
				"stream_options": map[string]any{"include_usage": true},
				"max_tokens":     256.0,
				"temperature":    0.25,
			},
		},
	}, {
		name: "no messages is an empty list",
		cfg:  openai.Config{Model: "m"},
		want: sent{
			Method: "POST", Path: "/v1/chat/completions",
			Header: map[string]string{"Authorization": "", "Content-Type": "application/json", "Accept": "text/event-stream"},
			Body: map[string]any{
				"model": "m", "messages": []any{}, "stream": true,
				"stream_options": map[string]any{"include_usage": true},
			},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got sent
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
				got = sent{Method: r.Method, Path: r.URL.Path, Header: map[string]string{}}
				for k := range tt.want.Header {
					got.Header[k] = r.Header.Get(k)
				}
				if err := json.NewDecoder(r.Body).Decode(&got.Body); err != nil {
					t.Errorf("request body: %v", err)
				}
				sse(false, "data: [DONE]\n\n")(w, r)
			})
			cfg := tt.cfg
			cfg.BaseURL = srv.URL + "/v1"
			if _, err := openai.New(cfg).Generate(t.Context(), tt.req, (&recorder{}).emit); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("request (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBaseURLAsPasted(t *testing.T) {
	tests := []struct {
		base      string // appended to the server's URL
		wantPath  string
		wantQuery string
	}{
		{"", "/chat/completions", ""},
		{"/", "/chat/completions", ""},
		{"/v1", "/v1/chat/completions", ""},
		{"/v1/", "/v1/chat/completions", ""},
		{"/v1//", "/v1/chat/completions", ""},
		{"/v1/chat/completions", "/v1/chat/completions", ""},
		{"/v1/chat/completions/", "/v1/chat/completions", ""},
		{"/api/openai/v1 ", "/api/openai/v1/chat/completions", ""},
		{"/openai/deployments/gpt/chat/completions?api-version=2024-10-21", "/openai/deployments/gpt/chat/completions", "api-version=2024-10-21"},
	}
	for _, tt := range tests {
		t.Run(tt.base, func(t *testing.T) {
			var path, query string
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
				path, query = r.URL.Path, r.URL.RawQuery
				sse(false, "data: [DONE]\n\n")(w, r)
			})
			c := openai.New(openai.Config{BaseURL: "  " + srv.URL + tt.base})
			if _, err := c.Generate(t.Context(), userRequest("hi"), (&recorder{}).emit); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{tt.wantPath, tt.wantQuery}, []string{path, query}); diff != "" {
				t.Errorf("path, query (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUnusableBaseURL(t *testing.T) {
	for _, base := range []string{"localhost:8080/v1", "api.openai.com/v1", "ftp://example.com/v1", "http://", "http://user:secret@%zz"} {
		t.Run(base, func(t *testing.T) {
			_, err := openai.New(openai.Config{BaseURL: base}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
			if code(err) != agate.EUpstream || !strings.Contains(err.Error(), "LLM_BASE_URL") {
				t.Fatalf("err = %v, want %s naming LLM_BASE_URL", err, agate.EUpstream)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows the URL's password", err)
			}
		})
	}
}

func TestHTTPErrors(t *testing.T) {
	tests := []struct {
		name           string
		status         int
		header         map[string]string
		body           string
		wantCode       agate.Code
		wantMessage    string
		wantRetryAfter time.Duration
	}{{
		name:   "bad key",
		status: 401,
		body: `{"error":{"message":"Incorrect API key provided: ` + testKey + `. You can find your API key at https://platform.openai.com/account/api-keys.",` +
			`"type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`,
		wantCode: agate.EUpstreamAuth,
		wantMessage: "The LLM provider refused the gateway's credentials (HTTP 401): Incorrect API key provided: [redacted]. " +
			"You can find your API key at https://platform.openai.com/account/api-keys. Check LLM_API_KEY.",
	}, {
		name:        "forbidden region",
		status:      403,
		body:        `{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}`,
		wantCode:    agate.EUpstreamAuth,
		wantMessage: "The LLM provider refused the gateway's credentials (HTTP 403): Country, region, or territory not supported. Check LLM_API_KEY.",
	}, {
		name:           "rate limited",
		status:         429,
		header:         map[string]string{"Retry-After": "20"},
		body:           `{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}`,
		wantCode:       agate.EUpstreamRate,
		wantMessage:    "The LLM provider is rate limiting the gateway (HTTP 429): Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1. Retry after 20 seconds.",
		wantRetryAfter: 20 * time.Second,
	}, {
		name:           "rate limited, OpenAI's milliseconds win",
		status:         429,
		header:         map[string]string{"Retry-After": "2", "retry-after-ms": "1500"},
		body:           `{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29800, Requested 450. Please try again in 1.5s.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`,
		wantCode:       agate.EUpstreamRate,
		wantMessage:    "The LLM provider is rate limiting the gateway (HTTP 429): Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29800, Requested 450. Please try again in 1.5s. Retry after 2 seconds.",
		wantRetryAfter: 1500 * time.Millisecond,
	}, {
		name:           "rate limited, milliseconds only",
		status:         429,
		header:         map[string]string{"retry-after-ms": "250"},
		body:           `{"error":{"message":"Slow down"}}`,
		wantCode:       agate.EUpstreamRate,
		wantMessage:    "The LLM provider is rate limiting the gateway (HTTP 429): Slow down. Retry after 1 second.",
		wantRetryAfter: 250 * time.Millisecond,
	}, {
		name:        "rate limited without a wait",
		status:      429,
		body:        `{"error":{"message":"Slow down"}}`,
		wantCode:    agate.EUpstreamRate,
		wantMessage: "The LLM provider is rate limiting the gateway (HTTP 429): Slow down.",
	}, {
		name:           "rate limited, fractional seconds",
		status:         429,
		header:         map[string]string{"Retry-After": "0.5"},
		body:           `{"error":{"message":"Slow down"}}`,
		wantCode:       agate.EUpstreamRate,
		wantMessage:    "The LLM provider is rate limiting the gateway (HTTP 429): Slow down. Retry after 0.5 seconds.",
		wantRetryAfter: 500 * time.Millisecond,
	}, {
		name:        "rate limited with a date",
		status:      429,
		header:      map[string]string{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
		body:        `{"error":{"message":"Slow down","type":"requests"}}`,
		wantCode:    agate.EUpstreamRate,
		wantMessage: "The LLM provider is rate limiting the gateway (HTTP 429): Slow down. Retry after Wed, 21 Oct 2015 07:28:00 GMT.",
	}, {
		name:        "server error",
		status:      500,
		body:        `{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}`,
		wantCode:    agate.EUpstream,
		wantMessage: "The LLM provider answered with an error (HTTP 500): The server had an error while processing your request. Sorry about that!",
	}, {
		name:        "unknown model",
		status:      404,
		body:        `{"error":{"message":"The model ` + "`gpt-9`" + ` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}`,
		wantCode:    agate.EUpstream,
		wantMessage: "The LLM provider answered with an error (HTTP 404): The model `gpt-9` does not exist or you do not have access to it. Check LLM_BASE_URL (it usually ends in /v1) and LLM_MODEL.",
	}, {
		name:        "vLLM error shape",
		status:      400,
		body:        `{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}`,
		wantCode:    agate.EInvalid, // the caller's to fix: not retried, not a breaker failure
		wantMessage: "The LLM provider refused the request (HTTP 400): This model's maximum context length is 4096 tokens.",
	}, {
		name:        "proxy page",
		status:      502,
		header:      map[string]string{"Content-Type": "text/html"},
		body:        "<html><body><h1>502 Bad Gateway</h1></body></html>",
		wantCode:    agate.EUpstream,
		wantMessage: "The LLM provider answered with an error (HTTP 502).",
	}, {
		name:           "plain text",
		status:         503,
		header:         map[string]string{"Content-Type": "text/plain; charset=utf-8", "Retry-After": "1"},
		body:           "model is loading\n",
		wantCode:       agate.EUpstream,
		wantMessage:    "The LLM provider answered with an error (HTTP 503): model is loading. Retry after 1 second.",
		wantRetryAfter: time.Second,
	}, {
		name:        "server error with Retry-After gives no wait",
		status:      500,
		header:      map[string]string{"Retry-After": "5"},
		body:        `{"error":{"message":"boom"}}`,
		wantCode:    agate.EUpstream,
		wantMessage: "The LLM provider answered with an error (HTTP 500): boom. Retry after 5 seconds.",
	}, {
		name:        "gateway timeout",
		status:      504,
		body:        ``,
		wantCode:    agate.EUpstreamTimeout,
		wantMessage: "The LLM provider timed out (HTTP 504). Try again.",
	}, {
		name:        "request timeout",
		status:      408,
		body:        `{"error":{"message":"Request timed out."}}`,
		wantCode:    agate.EUpstreamTimeout,
		wantMessage: "The LLM provider timed out (HTTP 408): Request timed out. Try again.",
	}, {
		name:        "redirect",
		status:      301,
		header:      map[string]string{"Location": "https://elsewhere.example/v1/chat/completions"},
		wantCode:    agate.EUpstream,
		wantMessage: "The LLM base URL redirects elsewhere (HTTP 301). Set LLM_BASE_URL to the URL it redirects to.",
	}, {
		name:        "long body",
		status:      500,
		body:        `{"error":{"message":"` + strings.Repeat("x", 100000) + `"}}`,
		wantCode:    agate.EUpstream,
		wantMessage: "The LLM provider answered with an error (HTTP 500).", // not JSON once cut at 64 KiB
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
			c := openai.New(openai.Config{BaseURL: srv.URL, APIKey: testKey})
			var rec recorder
			_, err := c.Generate(t.Context(), userRequest("hi"), rec.emit)
			if got := code(err); got != tt.wantCode {
				t.Fatalf("err = %v, want code %q", err, tt.wantCode)
			}
			if diff := cmp.Diff(tt.wantMessage, agate.ErrorMessage(err)); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
			if got := agate.RetryAfter(err); got != tt.wantRetryAfter {
				t.Errorf("RetryAfter = %v, want %v", got, tt.wantRetryAfter)
			}
			if strings.Contains(err.Error(), testKey) {
				t.Errorf("error %q shows the API key", err)
			}
			if len(rec.deltas) != 0 {
				t.Errorf("emitted %q on an error", rec.deltas)
			}
		})
	}
}

func TestMissingKeyIsNamed(t *testing.T) {
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(401)
		io.WriteString(w, `{"error":{"message":"You didn't provide an API key.","type":"invalid_request_error","param":null,"code":null}}`)
	})
	_, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
	want := "The LLM provider refused the gateway's credentials (HTTP 401): You didn't provide an API key. No API key is configured; set LLM_API_KEY."
	if diff := cmp.Diff(want, agate.ErrorMessage(err)); diff != "" {
		t.Errorf("message (-want +got):\n%s", diff)
	}
}

func TestErrorObjectsWithStatus200(t *testing.T) {
	tests := []struct {
		name, contentType, body, wantMessage string
	}{{
		name:        "OpenAI error event",
		contentType: "text/event-stream",
		body:        `data: {"error":{"message":"Internal error","type":"server_error"}}` + "\n\n",
		wantMessage: "The LLM provider reported an error: Internal error.",
	}, {
		name:        "string error event",
		contentType: "text/event-stream",
		body:        `data: {"error":"upstream overloaded"}` + "\n\n",
		wantMessage: "The LLM provider reported an error: upstream overloaded.",
	}, {
		name:        "vLLM error event",
		contentType: "text/event-stream",
		body:        `data: {"object":"error","message":"out of memory","type":"InternalServerError","code":500}` + "\n\n",
		wantMessage: "The LLM provider reported an error: out of memory.",
	}, {
		name:        "plain-text error event",
		contentType: "text/event-stream",
		body:        "event: error\ndata: model crashed\n\n",
		wantMessage: "The LLM provider reported an error: model crashed.",
	}, {
		name:        "malformed chunk",
		contentType: "text/event-stream",
		body:        "data: {\"choices\":[\n\n",
		wantMessage: "The LLM provider sent a malformed stream chunk.",
	}, {
		name:        "JSON error object",
		contentType: "application/json",
		body:        `{"error":{"message":"Invalid model","type":"invalid_request_error"}}`,
		wantMessage: "The LLM provider reported an error: Invalid model.",
	}, {
		name:        "web page",
		contentType: "text/html; charset=utf-8",
		body:        "<!doctype html><title>Welcome</title>",
		wantMessage: "The LLM base URL answered with a web page, not the Chat Completions API. Check LLM_BASE_URL (it usually ends in /v1).",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				io.WriteString(w, tt.body)
			})
			_, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
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
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		io.WriteString(w, `{
  "id": "chatcmpl-123", "object": "chat.completion", "created": 1677652288,
  "model": "llama-3.1-8b-instruct", "system_fingerprint": "fp_44709d6fcb",
  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, how may I assist you today?", "refusal": null},
    "logprobs": null, "finish_reason": "stop"}],
  "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
}`)
	})
	var rec recorder
	got, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), rec.emit)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"Hello there, how may I assist you today?"}, rec.deltas); diff != "" {
		t.Errorf("deltas (-want +got):\n%s", diff)
	}
	want := agate.Reply{
		Text: "Hello there, how may I assist you today?", Model: "llama-3.1-8b-instruct", FinishReason: "stop",
		Usage: agate.Usage{PromptTokens: 9, CompletionTokens: 12, TotalTokens: 21},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reply (-want +got):\n%s", diff)
	}
}

func TestRefusalIsText(t *testing.T) {
	srv := serve(t, sse(false,
		`data: {"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""},"finish_reason":null}]}`+"\n\n",
		`data: {"model":"gpt-4o","choices":[{"index":0,"delta":{"refusal":"I can't help with that."},"finish_reason":null}]}`+"\n\n",
		`data: {"model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\n",
		"data: [DONE]\n\n"))
	got, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
	if err != nil {
		t.Fatal(err)
	}
	if got.Text != "I can't help with that." {
		t.Errorf("text = %q", got.Text)
	}
}

func TestStalledStreamTimesOut(t *testing.T) {
	first := `data: {"model":"m","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}` + "\n\n"
	tests := []struct {
		name       string
		cfg        openai.Config
		h          http.HandlerFunc
		wantDeltas []string
	}{{
		name:       "idle after a chunk",
		cfg:        openai.Config{IdleTimeout: 100 * time.Millisecond},
		h:          sse(true, first),
		wantDeltas: []string{"Hel"},
	}, {
		name: "idle after the headers",
		cfg:  openai.Config{IdleTimeout: 100 * time.Millisecond},
		h:    sse(true),
	}, {
		name: "whole request",
		cfg:  openai.Config{Timeout: 100 * time.Millisecond, IdleTimeout: time.Hour},
		h:    func(w http.ResponseWriter, r *http.Request) { hang(r) }, // no headers
	}, {
		name:       "whole request while streaming",
		cfg:        openai.Config{Timeout: 200 * time.Millisecond, IdleTimeout: time.Hour},
		h:          sse(true, first),
		wantDeltas: []string{"Hel"},
	}, {
		name: "http.Client timeout",
		cfg:  openai.Config{HTTPClient: &http.Client{Timeout: 100 * time.Millisecond}},
		h:    func(w http.ResponseWriter, r *http.Request) { hang(r) },
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := serve(t, tt.h)
			cfg := tt.cfg
			cfg.BaseURL = srv.URL
			var rec recorder
			got, err := openai.New(cfg).Generate(t.Context(), userRequest("hi"), rec.emit)
			if code(err) != agate.EUpstreamTimeout {
				t.Fatalf("err = %v, want code %q", err, agate.EUpstreamTimeout)
			}
			if diff := cmp.Diff(tt.wantDeltas, rec.deltas); diff != "" {
				t.Errorf("deltas (-want +got):\n%s", diff)
			}
			if got.Text != strings.Join(tt.wantDeltas, "") {
				t.Errorf("partial text = %q", got.Text)
			}
		})
	}
}

func TestStallAfterFinishKeepsReply(t *testing.T) {
	srv := serve(t, sse(true,
		`data: {"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}`+"\n\n",
		`data: {"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\n"))
	got, err := openai.New(openai.Config{BaseURL: srv.URL, IdleTimeout: 100 * time.Millisecond}).
		Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(agate.Reply{Text: "Hi", Model: "m", FinishReason: "stop"}, got); diff != "" {
		t.Errorf("reply (-want +got):\n%s", diff)
	}
}

func TestCallerCancels(t *testing.T) {
	first := `data: {"model":"m","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}` + "\n\n"

	t.Run("mid-stream", func(t *testing.T) {
		srv := serve(t, sse(true, first))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		got, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(ctx, userRequest("hi"), func(agate.Delta) error {
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
		_, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(ctx, userRequest("hi"), (&recorder{}).emit)
		if !errors.Is(err, context.Canceled) || code(err) != "" {
			t.Fatalf("err = %v, want context.Canceled without an agate code", err)
		}
	})
	t.Run("already cancelled", func(t *testing.T) {
		calls := 0
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) { calls++ })
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(ctx, userRequest("hi"), (&recorder{}).emit)
		if !errors.Is(err, context.Canceled) || code(err) != "" || calls != 0 {
			t.Fatalf("err = %v after %d calls, want context.Canceled and no call", err, calls)
		}
	})
	t.Run("caller deadline", func(t *testing.T) {
		srv := serve(t, sse(true, first))
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		_, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(ctx, userRequest("hi"), (&recorder{}).emit)
		if !errors.Is(err, context.DeadlineExceeded) || code(err) != "" {
			t.Fatalf("err = %v, want context.DeadlineExceeded without an agate code", err)
		}
	})
}

func TestEmitErrorStops(t *testing.T) {
	raw := transcript(t, "stream.sse")
	srv := serve(t, sse(false, raw))
	errStop := errors.New("client went away")
	var calls int
	got, err := openai.New(openai.Config{BaseURL: srv.URL}).Generate(t.Context(), userRequest("hi"), func(d agate.Delta) error {
		calls++
		return errStop
	})
	if err != errStop {
		t.Fatalf("err = %v, want the emit error itself", err)
	}
	if calls != 1 || got.Text != "Hello" {
		t.Errorf("emit called %d times, text %q; want 1 call and %q", calls, got.Text, "Hello")
	}
}

func TestUnreachableProvider(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		_, err = openai.New(openai.Config{BaseURL: "http://" + addr + "/v1"}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
		if code(err) != agate.EUpstream || !strings.Contains(agate.ErrorMessage(err), "unreachable") {
			t.Fatalf("err = %v, want %s saying the provider is unreachable", err, agate.EUpstream)
		}
	})
	t.Run("unknown host", func(t *testing.T) {
		hc := &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no such host", Name: "llm.invalid", IsNotFound: true}}
			},
		}}
		_, err := openai.New(openai.Config{BaseURL: "http://llm.invalid/v1", HTTPClient: hc}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
		want := "The LLM provider is unreachable: its host name does not resolve. Check LLM_BASE_URL."
		if code(err) != agate.EUpstream || agate.ErrorMessage(err) != want {
			t.Fatalf("err = %v, want %s %q", err, agate.EUpstream, want)
		}
	})
}

// drop ends the connection of w without a response, with a reset (RST) or a close (FIN).
func drop(t *testing.T, w http.ResponseWriter, reset bool) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok && reset {
		tc.SetLinger(0) // RST, not FIN
	}
	conn.Close()
}

func TestConnectionLostBeforeOrAfterFirstByte(t *testing.T) {
	tool := `data: {"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]},"finish_reason":null}]}` + "\n\n"
	tests := []struct {
		name        string
		before      string // sent before the connection is lost; "" for no response at all
		reset       bool
		wantCode    agate.Code
		wantMessage string
		wantReply   agate.Reply
	}{{
		name:        "reset before the response",
		reset:       true,
		wantCode:    agate.EUpstream,
		wantMessage: "The LLM provider could not be reached: it closed the connection before answering. Try again.",
	}, {
		name:        "closed before the response",
		wantCode:    agate.EUpstream,
		wantMessage: "The LLM provider could not be reached: it closed the connection before answering. Try again.",
	}, {
		name:        "reset after the headers",
		before:      "\n",
		reset:       true,
		wantCode:    agate.EStreamTruncated,
		wantMessage: "The LLM provider's stream ended before the reply was complete; try again.",
		wantReply:   agate.Reply{Model: "m"},
	}, {
		name:        "reset mid-stream",
		before:      `data: {"model":"m","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}` + "\n\n",
		reset:       true,
		wantCode:    agate.EStreamTruncated,
		wantMessage: "The LLM provider's stream ended before the reply was complete; try again.",
		wantReply:   agate.Reply{Text: "Hel", Model: "m"},
	}, {
		name:        "closed in a tool call",
		before:      tool,
		wantCode:    agate.EStreamTruncated,
		wantMessage: "The LLM provider's stream ended before the reply was complete; try again.",
		wantReply:   agate.Reply{Model: "m", ToolCalls: []agate.ToolCall{{ID: "call_1", Name: "f", Arguments: `{"a":`}}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				if tt.before != "" {
					w.Header().Set("Content-Type", "text/event-stream")
					io.WriteString(w, tt.before)
					http.NewResponseController(w).Flush()
				}
				drop(t, w, tt.reset)
			})
			got, err := openai.New(openai.Config{BaseURL: srv.URL, Model: "m"}).Generate(t.Context(), userRequest("hi"), (&recorder{}).emit)
			if code(err) != tt.wantCode {
				t.Fatalf("err = %v, want code %q", err, tt.wantCode)
			}
			if diff := cmp.Diff(tt.wantMessage, agate.ErrorMessage(err)); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantReply, got); diff != "" {
				t.Errorf("partial reply (-want +got):\n%s", diff)
			}
		})
	}
}

func TestConcurrentGenerate(t *testing.T) {
	raw := transcript(t, "stream.sse")
	srv := serve(t, sse(false, raw))
	c := openai.New(openai.Config{BaseURL: srv.URL})
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			got, err := c.Generate(t.Context(), userRequest("hi"), func(agate.Delta) error { return nil })
			if err == nil && got.Text != "Hello, wörld! 👋" {
				err = errors.New("wrong text " + got.Text)
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
