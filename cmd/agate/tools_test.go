package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/agate-gw/agate"
)

// TestTurnRunsToolCallsAndAnswers: a model that makes four calls at once (a good one,
// one with invalid arguments, one of a tool the user may not use, one of a tool not
// offered) gets four results, in its order, then answers; the client sees every step,
// stored.
func TestTurnRunsToolCallsAndAnswers(t *testing.T) {
	u := newUpstream(t)
	u.toolPlan.Store(&[]scriptedCall{
		{"echo", `{"text":"hello from a tool"}`},
		{"timestamp", `{"timezone":5}`},
		{"http_fetch", `{"url":"https://example.com/"}`},
		{"nosuch", `{}`},
	})
	// nosuch stands for any tool not offered: a model (or a prompt injected into it)
	// cannot reach the rest of the catalogue.
	g := start(t, withUpstream(u, map[string]string{"AGATE_TURN_TOOLS": "echo,timestamp,http_fetch"}))
	a := g.send(t, "", "use your tools")
	frames := g.subscribe(t, a.SessionID, "").untilFinal(t)

	var steps []string
	for _, f := range frames {
		if f.Event == agate.TypeToolStart || f.Event == agate.TypeToolResult {
			steps = append(steps, fmt.Sprintf("%s %v %v", f.Event, f.Data.Metadata["tool"], f.Data.Metadata["status"]))
		}
	}
	want := []string{
		"tool.start echo <nil>", "tool.start timestamp <nil>", "tool.start http_fetch <nil>", "tool.start nosuch <nil>",
		"tool.result echo ok", "tool.result timestamp error", "tool.result http_fetch blocked", "tool.result nosuch error",
	}
	if strings.Join(steps, "\n") != strings.Join(want, "\n") {
		t.Errorf("tool steps:\n%s\nwant:\n%s", strings.Join(steps, "\n"), strings.Join(want, "\n"))
	}

	// The model's second request carries the four results in its order.
	reqs := u.calls()
	if len(reqs) < 2 {
		t.Fatalf("%d model requests, want 2", len(reqs))
	}
	second := reqs[len(reqs)-1].Messages
	var results []string
	for _, m := range second {
		if m.Role == "tool" {
			results = append(results, m.ToolCallID+": "+m.Content)
		}
	}
	// The model answers from the results: the fake repeats the last one it was given.
	final := frames[len(frames)-1]
	if want := reply("tool said " + second[len(second)-1].Content); final.Data.Metadata["status"] != agate.StatusOK || final.Data.Message != want {
		t.Errorf("final = %q %v, want %q", final.Data.Message, final.Data.Metadata, want)
	}
	if len(results) != 4 || results[0] != "call_0: hello from a tool" ||
		!strings.Contains(results[1], "timezone") || !strings.Contains(results[2], "may not be used") ||
		!strings.Contains(results[3], "no tool") {
		t.Errorf("tool results sent to the model:\n%s", strings.Join(results, "\n"))
	}

	// They are stored: a client that comes later replays them.
	var page struct {
		Events []agate.Event `json:"events"`
	}
	do(t, "GET", g.URL+"/v1/sessions/"+a.SessionID+"/events", "", nil).json(t, &page)
	n := 0
	for _, ev := range page.Events {
		if ev.Type == agate.TypeToolResult {
			n++
		}
	}
	if n != 4 {
		t.Errorf("%d tool results stored, want 4", n)
	}
}

// TestToolRoutes: the tools a caller may use, and a tool run directly for a session, with
// the same checks and limits as a model's call.
func TestToolRoutes(t *testing.T) {
	g := start(t, withUpstream(newUpstream(t), nil))
	var list struct {
		Tools []agate.Tool `json:"tools"`
	}
	do(t, "GET", g.URL+"/v1/tools", "", nil).json(t, &list)
	var names []string
	for _, tl := range list.Tools {
		names = append(names, tl.Name)
	}
	if strings.Join(names, ",") != "echo,timestamp" { // http_fetch is high risk: granted to nobody here
		t.Errorf("usable tools = %v, want echo and timestamp", names)
	}

	a := g.send(t, "", "hi")
	run := func(tool, args string) (int, map[string]any) {
		res := do(t, "POST", g.URL+"/v1/tool/request", fmt.Sprintf(`{"session_id":%q,"tool":%q,"args":%s}`, a.SessionID, tool, args), nil)
		var out map[string]any
		_ = json.Unmarshal(res.body, &out)
		return res.status, out
	}
	if st, out := run("echo", `{"text":"direct"}`); st != 200 || out["status"] != "ok" || out["result"] != "direct" || out["event_id"] == "" {
		t.Errorf("echo: %d %v", st, out)
	}
	if st, out := run("http_fetch", `{"url":"http://127.0.0.1/"}`); st != 200 || out["status"] != "blocked" {
		t.Errorf("http_fetch: %d %v, want blocked", st, out)
	}
	if st, out := run("echo", `{"text":1}`); st != 200 || out["status"] != "error" {
		t.Errorf("echo with bad arguments: %d %v, want an error result", st, out)
	}
	big := strings.Repeat("x", 20000)
	if st, out := run("echo", `{"text":"`+big+`"}`); st != 200 || out["truncated"] != true || !strings.Contains(fmt.Sprint(out["result"]), "truncated") {
		t.Errorf("oversized result: %d truncated=%v", st, out["truncated"])
	}
	if res := do(t, "POST", g.URL+"/v1/tool/request", `{"session_id":"`+a.SessionID+`"}`, nil); res.status != 400 {
		t.Errorf("no tool named: %d, want 400", res.status)
	}
}

// TestToolNotOfferedIsRefused: a catalogue tool that the turn does not offer cannot be
// called (a prompt injected into the model may try).
func TestToolNotOfferedIsRefused(t *testing.T) {
	u := newUpstream(t)
	u.toolPlan.Store(&[]scriptedCall{{"timestamp", `{}`}})
	g := start(t, withUpstream(u, map[string]string{"AGATE_TURN_TOOLS": "echo"}))
	a := g.send(t, "", "what time is it")
	for _, f := range g.subscribe(t, a.SessionID, "").untilFinal(t) {
		if f.Event == agate.TypeToolResult && (f.Data.Metadata["status"] != "error" || !strings.Contains(f.Data.Message, "no tool")) {
			t.Errorf("timestamp, not offered: %q %v", f.Data.Message, f.Data.Metadata)
		}
	}
}
