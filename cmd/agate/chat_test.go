package main

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
)

// sdk is the official OpenAI Go SDK pointed at the gateway, as a user would point it.
func sdk(g *testGateway, opts ...option.RequestOption) openai.Client {
	return openai.NewClient(append([]option.RequestOption{
		option.WithBaseURL(g.URL + "/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0),
	}, opts...)...)
}

func TestOpenAISDKCompletesThroughAgate(t *testing.T) {
	u := newUpstream(t)
	g := start(t, withUpstream(u, nil))
	client := sdk(g)
	ctx := t.Context()

	var res *http.Response
	resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:    "default",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Be brief."), openai.UserMessage("hello sdk")},
	}, option.WithResponseInto(&res))
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Choices[0].Message.Content; got != reply("hello sdk") || resp.Choices[0].FinishReason != "stop" {
		t.Fatalf("non-streaming: %q finish %q", got, resp.Choices[0].FinishReason)
	}
	if resp.Usage.TotalTokens == 0 || res.Header.Get("X-Agate-Overhead-Ms") == "" {
		t.Fatalf("usage %+v, overhead header %q", resp.Usage, res.Header.Get("X-Agate-Overhead-Ms"))
	}

	stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:         "default",
		Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("stream me please")},
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	acc := openai.ChatCompletionAccumulator{}
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if got := acc.Choices[0].Message.Content; got != reply("stream me please") || chunks < 4 || acc.Usage.TotalTokens == 0 {
		t.Fatalf("streaming: %q in %d chunks, usage %+v", got, chunks, acc.Usage)
	}

	models, err := client.Models.List(ctx)
	if err != nil || len(models.Data) == 0 || models.Data[0].ID != "default" {
		t.Fatalf("models: %+v %v", models, err)
	}
}

func TestOpenAISDKToolCallsRoundTrip(t *testing.T) {
	u := newUpstream(t)
	g := start(t, withUpstream(u, nil))
	client := sdk(g)
	ctx := t.Context()
	params := openai.ChatCompletionNewParams{
		Model:    "default",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("weather in Paris?")},
		Tools: []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name: "get_weather", Description: openai.String("Weather of a city"),
			Parameters: shared.FunctionParameters{"type": "object", "properties": map[string]any{"city": map[string]any{"type": "string"}}},
		})},
	}

	resp, err := client.Chat.Completions.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	calls := resp.Choices[0].Message.ToolCalls
	if len(calls) != 1 || calls[0].Function.Name != "get_weather" || calls[0].Function.Arguments != `{"city": "Paris"}` || resp.Choices[0].FinishReason != "tool_calls" {
		t.Fatalf("tool call = %+v, finish %q", calls, resp.Choices[0].FinishReason)
	}

	stream := client.Chat.Completions.NewStreaming(ctx, params)
	acc := openai.ChatCompletionAccumulator{}
	var finished []string
	for stream.Next() {
		acc.AddChunk(stream.Current())
		if tc, ok := acc.JustFinishedToolCall(); ok {
			finished = append(finished, tc.Name+tc.Arguments)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if len(finished) != 1 || finished[0] != `get_weather{"city": "Paris"}` {
		t.Fatalf("streamed tool calls = %q", finished)
	}

	params.Messages = append(params.Messages, resp.Choices[0].Message.ToParam(), openai.ToolMessage("sunny", calls[0].ID))
	resp, err = client.Chat.Completions.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Choices[0].Message.Content; got != reply("tool said sunny") {
		t.Fatalf("after the tool result: %q", got)
	}
	sent := u.calls()
	lastReq := sent[len(sent)-1]
	if n := len(lastReq.Messages); n != 3 || lastReq.Messages[2].Role != "tool" || lastReq.Messages[2].ToolCallID != calls[0].ID {
		t.Fatalf("upstream got messages %+v", lastReq.Messages)
	}
}

func TestChatCompletionsPassesUnknownFieldsAndMapsUpstreamErrors(t *testing.T) {
	u := newUpstream(t)
	g := start(t, withUpstream(u, map[string]string{"LLM_RETRIES": "0"}))
	res := do(t, "POST", g.URL+"/v1/chat/completions",
		`{"model":"default","messages":[{"role":"user","content":"hi"}],"seed":42,"logit_bias":{"50256":-100},"user":"u-1"}`, nil)
	if res.status != 200 {
		t.Fatalf("%d %s", res.status, res.body)
	}
	raw := u.calls()[0].Raw
	if raw["seed"] != float64(42) || raw["user"] != "u-1" || raw["logit_bias"] == nil {
		t.Fatalf("unknown fields did not pass through: %v", raw)
	}
	// Reasoning models refuse max_tokens: the limit goes on under the client's name.
	res = do(t, "POST", g.URL+"/v1/chat/completions",
		`{"model":"default","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":100}`, nil)
	raw = u.calls()[1].Raw
	if res.status != 200 || raw["max_completion_tokens"] != float64(100) || raw["max_tokens"] != nil {
		t.Fatalf("max_completion_tokens sent upstream as %v / max_tokens %v", raw["max_completion_tokens"], raw["max_tokens"])
	}

	status := int32(500)
	u.fail.Store(&status)
	client := sdk(g)
	_, err := client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{
		Model: "default", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadGateway || apiErr.Code != "upstream_error" || !strings.Contains(apiErr.Message, "500") {
		t.Fatalf("upstream 500 reached the SDK as %v", err)
	}

	limited := int32(429)
	u.fail.Store(&limited)
	_, err = client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{
		Model: "default", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	})
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests || apiErr.Code != "upstream_rate_limited" {
		t.Fatalf("upstream 429 reached the SDK as %v", err)
	}
	u.fail.Store(nil)

	for body, code := range map[string]string{
		`{"model":"default","messages":[]}`:                                                                         "invalid_request",
		`{"model":"default","messages":[{"role":"wizard","content":"hi"}]}`:                                         "invalid_request",
		`{"model":"default","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`: "invalid_request",
		`{"model":"default","n":3,"messages":[{"role":"user","content":"hi"}]}`:                                     "invalid_request",
		`{"model":"default","messages":"hi"}`:                                                                       "invalid_json",
		`{"model":`:                                                                                                 "invalid_json",
	} {
		res := do(t, "POST", g.URL+"/v1/chat/completions", body, nil)
		var e struct {
			Error struct {
				Message, Type, Code string
			} `json:"error"`
		}
		res.json(t, &e)
		if res.status != 400 || e.Error.Code != code || e.Error.Type != "invalid_request_error" || e.Error.Message == "" {
			t.Errorf("%s → %d %+v, want 400 %s", body, res.status, e, code)
		}
	}
}

func TestChatCompletionsRecordsIntoASessionWhenAsked(t *testing.T) {
	u := newUpstream(t)
	g := start(t, withUpstream(u, nil))
	a := g.send(t, "", "first, through the session API")
	g.subscribe(t, a.SessionID, "").untilFinal(t)

	client := sdk(g)
	_, err := client.Chat.Completions.New(t.Context(), openai.ChatCompletionNewParams{
		Model: "default", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("second, through the SDK")},
	}, option.WithHeader("X-Session-Id", a.SessionID))
	if err != nil {
		t.Fatal(err)
	}
	var hist struct {
		Messages []agate.Event `json:"messages"`
	}
	do(t, "GET", g.URL+"/v1/sessions/"+a.SessionID+"/history", "", nil).json(t, &hist)
	var texts []string
	for _, m := range hist.Messages {
		texts = append(texts, m.Message)
	}
	want := []string{"first, through the session API", reply("first, through the session API"), "second, through the SDK", reply("second, through the SDK")}
	if strings.Join(texts, "|") != strings.Join(want, "|") {
		t.Fatalf("history = %q", texts)
	}
	res := do(t, "POST", g.URL+"/v1/chat/completions", `{"model":"default","messages":[{"role":"user","content":"hi"}]}`,
		map[string]string{"X-Session-Id": "6f1c8e9a-1b2c-4d3e-8f40-5a6b7c8d9e0f"})
	if res.status != 404 {
		t.Fatalf("unknown X-Session-Id: %d %s", res.status, res.body)
	}
}

func TestStreamCutAfterTheFirstByteEndsWithAnErrorChunkAndNoRetry(t *testing.T) {
	u := newUpstream(t)
	u.cutAt.Store(2)
	g := start(t, withUpstream(u, nil))
	client := sdk(g)
	stream := client.Chat.Completions.NewStreaming(t.Context(), openai.ChatCompletionNewParams{
		Model: "default", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("one two three")},
	})
	var text string
	for stream.Next() {
		if c := stream.Current(); len(c.Choices) > 0 {
			text += c.Choices[0].Delta.Content
		}
	}
	if err := stream.Err(); err == nil || !strings.Contains(err.Error(), "stream_truncated") {
		t.Fatalf("stream ended with %v, want an error naming stream_truncated", err)
	}
	if text != "You said: " || len(u.calls()) != 1 {
		t.Fatalf("client got %q over %d upstream calls; want the first two words once, no retry", text, len(u.calls()))
	}
}

// An OpenAI SDK client gets an Anthropic model's parallel tool calls in OpenAI's shape,
// streamed and not, through the router and the ingress.
func TestOpenAISDKGetsAnthropicToolCalls(t *testing.T) {
	transcript, err := os.ReadFile("../../llm/anthropic/testdata/tool_use.sse")
	if err != nil {
		t.Fatal(err)
	}
	anthropicAPI := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/messages" || r.Header.Get("x-api-key") != "sk-ant-test" {
			http.Error(w, `{"type":"error","error":{"type":"not_found_error","message":"no"}}`, http.StatusNotFound)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write(transcript)
	}))
	t.Cleanup(anthropicAPI.Close)
	g := start(t, map[string]string{"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": anthropicAPI.URL})
	client := sdk(g)
	params := openai.ChatCompletionNewParams{
		Model:    "default",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("weather and time in SF?")},
		Tools: []openai.ChatCompletionToolUnionParam{
			openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: "get_weather"}),
			openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: "get_time"}),
		},
	}
	want := []string{
		`toolu_01T1x1fJ34qAmk2tNTrN7Up6 get_weather {"location": "San Francisco, CA", "unit": "fahrenheit"}`,
		`toolu_01EjbmDLTn1iEsKNmiT1tsMN get_time {"timezone": "America/Los_Angeles"}`,
	}

	resp, err := client.Chat.Completions.New(t.Context(), params)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range resp.Choices[0].Message.ToolCalls {
		got = append(got, c.ID+" "+c.Function.Name+" "+c.Function.Arguments)
	}
	if strings.Join(got, "|") != strings.Join(want, "|") || resp.Choices[0].FinishReason != "tool_calls" {
		t.Fatalf("non-streaming tool calls = %q, finish %q", got, resp.Choices[0].FinishReason)
	}

	stream := client.Chat.Completions.NewStreaming(t.Context(), params)
	acc := openai.ChatCompletionAccumulator{}
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	for _, c := range acc.Choices[0].Message.ToolCalls {
		got = append(got, c.ID+" "+c.Function.Name+" "+c.Function.Arguments)
	}
	if strings.Join(got, "|") != strings.Join(want, "|") || acc.Choices[0].Message.Content != "Okay, let's check the weather and the time:" {
		t.Fatalf("streamed tool calls = %q, text %q", got, acc.Choices[0].Message.Content)
	}
}
