package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
)

func withUpstream(u *upstream, env map[string]string) map[string]string {
	out := map[string]string{"LLM_BASE_URL": u.URL + "/v1", "LLM_API_KEY": "sk-test", "LLM_MODEL": "gpt-test"}
	for k, v := range env {
		out[k] = v
	}
	return out
}

func types(frames []frame) []string {
	var out []string
	for _, f := range frames {
		if len(out) > 0 && f.Event == agate.TypeStream && out[len(out)-1] == agate.TypeStream {
			continue // many stream frames read as one
		}
		out = append(out, f.Event)
	}
	return out
}

func TestChatTurnStreamsToSSEAndPersists(t *testing.T) {
	u := newUpstream(t)
	u.pauseAt(2) // so that the client connects while the reply streams
	g := start(t, withUpstream(u, nil))

	a := g.send(t, "", "hello there")
	if a.SessionID == "" || a.EventID == "" || a.Seq != 1 {
		t.Fatalf("accepted = %+v", a)
	}
	s := g.subscribe(t, a.SessionID, "")
	<-u.paused
	u.release()
	frames := s.untilFinal(t)

	want := []string{agate.TypeUserMessage, agate.TypeStarted, agate.TypeThinking, agate.TypeStream, agate.TypeFinal}
	if diff := cmp.Diff(want, types(frames)); diff != "" {
		t.Fatalf("event types (-want +got):\n%s", diff)
	}
	final := frames[len(frames)-1]
	if final.Data.Message != reply("hello there") || final.Data.Metadata["status"] != "ok" {
		t.Fatalf("final = %q %v, want %q status ok", final.Data.Message, final.Data.Metadata, reply("hello there"))
	}
	var streamed string
	for _, f := range frames {
		if f.Data.Version != agate.Version || f.Data.SessionID.String() != a.SessionID {
			t.Fatalf("frame %s has envelope %+v", f.ID, f.Data)
		}
		if f.Event == agate.TypeStream {
			streamed += f.Data.Delta
			if f.Data.Message != streamed {
				t.Fatalf("stream message %q is not the cumulative text %q", f.Data.Message, streamed)
			}
		}
	}
	if streamed != final.Data.Message {
		t.Fatalf("deltas add up to %q, final says %q", streamed, final.Data.Message)
	}
	if frames[0].ID != "1" || frames[1].ID != "2" || final.ID != fmt.Sprint(final.Data.Seq) {
		t.Fatalf("SSE ids %q … %q do not follow the session sequence", frames[0].ID, final.ID)
	}

	// The model saw the system prompt and the message; stored events skip the stream.
	calls := u.calls()
	if len(calls) != 1 || calls[0].Messages[0].Role != "system" || calls[0].Messages[1].Content != "hello there" || !calls[0].Stream {
		t.Fatalf("upstream got %+v", calls)
	}
	var page struct {
		Events []agate.Event `json:"events"`
	}
	do(t, "GET", g.URL+"/v1/sessions/"+a.SessionID+"/events", "", nil).json(t, &page)
	var stored []string
	for _, ev := range page.Events {
		stored = append(stored, ev.Type)
	}
	if diff := cmp.Diff([]string{agate.TypeUserMessage, agate.TypeStarted, agate.TypeThinking, agate.TypeFinal}, stored); diff != "" {
		t.Fatalf("stored events (-want +got):\n%s", diff)
	}
}

func TestHistorySurvivesRestart(t *testing.T) {
	u := newUpstream(t)
	env := withUpstream(u, map[string]string{"AGATE_DATA_DIR": t.TempDir()})
	g := start(t, env)
	a := g.send(t, "", "remember the number 42")
	g.subscribe(t, a.SessionID, "").untilFinal(t)
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}

	g = start(t, env)
	var hist struct {
		Messages []agate.Event `json:"messages"`
	}
	do(t, "GET", g.URL+"/v1/sessions/"+a.SessionID+"/history", "", nil).json(t, &hist)
	if len(hist.Messages) != 2 || hist.Messages[1].Message != reply("remember the number 42") {
		t.Fatalf("history after restart = %+v", hist.Messages)
	}
	g.send(t, a.SessionID, "what number?")
	frames := g.subscribe(t, a.SessionID, fmt.Sprint(hist.Messages[1].Seq)).untilFinal(t)
	if frames[0].Event != agate.TypeUserMessage || frames[0].Data.Message != "what number?" {
		t.Fatalf("resume after the last stored event started with %+v", frames[0])
	}
	calls := u.calls()
	var prompt []string
	for _, m := range calls[len(calls)-1].Messages {
		prompt = append(prompt, m.Role+": "+m.Content)
	}
	want := []string{"system: You are a helpful assistant.", "user: remember the number 42",
		"assistant: " + reply("remember the number 42"), "user: what number?"}
	if diff := cmp.Diff(want, prompt); diff != "" {
		t.Fatalf("second turn's prompt (-want +got):\n%s", diff)
	}
}

func TestSSEResumeAfterDisconnectMidStreamLosesAndDuplicatesNothing(t *testing.T) {
	u := newUpstream(t)
	u.pauseAt(3)
	g := start(t, withUpstream(u, nil))
	a := g.send(t, "", "one two three four five six")

	s := g.subscribe(t, a.SessionID, "")
	var seen []frame
	<-u.paused
	for {
		f := s.next(t)
		seen = append(seen, f)
		if f.Event == agate.TypeStream && f.Data.Message == "You said: one " {
			break // three chunks in: the stream is paused here
		}
	}
	s.body.Close() // the client drops mid-stream

	// It reconnects while the turn still streams: it gets the rest, live.
	s = g.subscribe(t, a.SessionID, seen[len(seen)-1].ID)
	u.release()
	rest := s.untilFinal(t)
	all := append(seen, rest...)
	ids := map[string]bool{}
	var text string
	for _, f := range all {
		if ids[f.ID] {
			t.Fatalf("event id %s delivered twice", f.ID)
		}
		ids[f.ID] = true
		if f.Event == agate.TypeStream {
			text += f.Data.Delta
		}
	}
	final := all[len(all)-1]
	if final.Event != agate.TypeFinal || text != final.Data.Message || text != reply("one two three four five six") {
		t.Fatalf("across the reconnect the deltas read %q, final %q", text, final.Data.Message)
	}

	// A client that was away for the whole rest of the turn gets the stored final reply.
	u.pauseAt(2)
	b := g.send(t, a.SessionID, "seven eight nine")
	s = g.subscribe(t, a.SessionID, final.ID)
	<-u.paused
	var mid frame
	for mid.Event != agate.TypeStream {
		mid = s.next(t)
	}
	s.body.Close()
	u.release()
	var events struct {
		Events []agate.Event `json:"events"`
	}
	for !slices.ContainsFunc(events.Events, func(ev agate.Event) bool { return ev.Type == agate.TypeFinal }) {
		do(t, "GET", g.URL+"/v1/sessions/"+b.SessionID+"/events?after="+final.ID, "", nil).json(t, &events)
		time.Sleep(10 * time.Millisecond)
	}
	rest = g.subscribe(t, a.SessionID, mid.ID).untilFinal(t)
	if len(rest) != 1 || rest[0].Data.Message != reply("seven eight nine") {
		t.Fatalf("after a turn ended offline, resume from %s sent %+v", mid.ID, rest)
	}
}

func TestIdempotentRetryRunsTheTurnOnce(t *testing.T) {
	u := newUpstream(t)
	g := start(t, withUpstream(u, nil))
	body := `{"message":"charge my card"}`
	key := map[string]string{"Idempotency-Key": "retry-1"}
	res1 := do(t, "POST", g.URL+"/v1/session/message", body, key)
	res2 := do(t, "POST", g.URL+"/v1/session/message", body, key)
	if res1.status != 200 || res2.status != 200 || string(res1.body) != string(res2.body) {
		t.Fatalf("retry answered %d %s, first %d %s", res2.status, res2.body, res1.status, res1.body)
	}
	if res2.header.Get("Idempotent-Replayed") != "true" {
		t.Error("retry is not marked Idempotent-Replayed")
	}
	var a accepted
	res1.json(t, &a)
	first := g.subscribe(t, a.SessionID, "").untilFinal(t)
	g.send(t, a.SessionID, "and then?") // a later turn proves the retried one ran once
	g.subscribe(t, a.SessionID, first[len(first)-1].ID).untilFinal(t)
	if n := len(u.calls()); n != 2 {
		t.Fatalf("upstream called %d times for one retried and one new message, want 2", n)
	}
	reused := do(t, "POST", g.URL+"/v1/session/message", `{"message":"something else"}`, key)
	if reused.status != http.StatusConflict || !strings.Contains(string(reused.body), `"idempotency_key_reused"`) {
		t.Fatalf("key reused with another body: %d %s", reused.status, reused.body)
	}
}

func TestWebSocketSendReceiveAndCancel(t *testing.T) {
	u := newUpstream(t)
	g := start(t, withUpstream(u, nil))
	a := g.send(t, "", "first")
	wsURL := "ws" + strings.TrimPrefix(g.URL, "http") + "/v1/session/" + a.SessionID + "/stream"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()

	type anyFrame struct {
		agate.Event
		Cancelled *bool  `json:"cancelled"`
		Code      string `json:"code"`
	}
	read := func() anyFrame {
		t.Helper()
		_, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var f anyFrame
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	until := func(typ string) anyFrame {
		t.Helper()
		for {
			if f := read(); f.Type == typ {
				return f
			}
		}
	}
	write := func(v string) {
		t.Helper()
		if err := conn.Write(ctx, websocket.MessageText, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}

	if f := until(agate.TypeFinal); f.Message != reply("first") {
		t.Fatalf("first turn over WS ended %+v", f)
	}
	write(`{"type":"ping"}`)
	until("pong")

	u.pauseAt(2)
	write(`{"type":"message","message":"second, to be cancelled"}`)
	if ack := until("ack"); ack.SessionID.String() != a.SessionID || ack.Seq == 0 {
		t.Fatalf("ack = %+v", ack)
	}
	<-u.paused
	until(agate.TypeStream)
	write(`{"type":"cancel"}`)
	if f := until("cancel"); f.Cancelled == nil || !*f.Cancelled {
		t.Fatalf("cancel answered %+v", f)
	}
	final := until(agate.TypeFinal)
	if final.Metadata["status"] != "cancelled" || final.Metadata["code"] != "cancelled" {
		t.Fatalf("cancelled turn ended with %+v", final.Metadata)
	}
	u.release()

	write(`{"type":"message","message":""}`)
	if f := until("error"); f.Code != "empty_message" {
		t.Fatalf("empty message over WS: %+v", f)
	}
	write(`{"type":"resume","after":1}`)
	if f := read(); f.Seq != 2 || f.Type != agate.TypeStarted {
		t.Fatalf("resume after 1 sent %s seq %d first, want the started event at seq 2", f.Type, f.Seq)
	}
	write(`{"type":"dance"}`)
	_, _, err = conn.Read(ctx)
	for err == nil {
		_, _, err = conn.Read(ctx)
	}
	if websocket.CloseStatus(err) != 4000 {
		t.Fatalf("unknown frame type closed with %v, want 4000", err)
	}
}

func TestWebSocketUnknownSessionClosesWith4004(t *testing.T) {
	g := start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.URL, "http")+"/v1/session/9b2f3c1e-8f0a-4c5e-9d1b-2a3c4d5e6f70/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = conn.Read(ctx)
	if websocket.CloseStatus(err) != 4004 {
		t.Fatalf("got %v, want close 4004", err)
	}
}

func TestProdWithoutProviderEndsTurnWithLLMNotConfigured(t *testing.T) {
	g := start(t, map[string]string{"AGATE_PROFILE": "prod"})
	a := g.send(t, "", "hi")
	frames := g.subscribe(t, a.SessionID, "").untilFinal(t)
	final := frames[len(frames)-1]
	if final.Event != agate.TypeFinal || final.Data.Metadata["code"] != "llm_not_configured" || !strings.Contains(final.Data.Message, "LLM_BASE_URL") {
		t.Fatalf("final = %+v", final.Data)
	}
}

func TestDevWithoutProviderUsesTheLabelledDemoModel(t *testing.T) {
	g := start(t, nil)
	a := g.send(t, "", "hi")
	frames := g.subscribe(t, a.SessionID, "").untilFinal(t)
	final := frames[len(frames)-1]
	if final.Data.Metadata["status"] != "ok" || !strings.Contains(final.Data.Message, "demo") {
		t.Fatalf("final = %+v", final.Data)
	}
}

func TestPendingTurnResumesAfterRestart(t *testing.T) {
	u := newUpstream(t)
	u.pauseAt(1)
	env := withUpstream(u, map[string]string{"AGATE_DATA_DIR": t.TempDir(), "AGATE_SHUTDOWN_GRACE": "100ms"})
	g := start(t, env)
	a := g.send(t, "", "survive this")
	<-u.paused
	if err := g.stop(); err != nil { // the turn is cut off by shutdown, unanswered
		t.Fatal(err)
	}
	u.release()

	g = start(t, env)
	frames := g.subscribe(t, a.SessionID, "").untilFinal(t)
	final := frames[len(frames)-1]
	if final.Data.Message != reply("survive this") {
		t.Fatalf("resumed turn ended %+v", final.Data)
	}
	var page struct {
		Events []agate.Event `json:"events"`
	}
	do(t, "GET", g.URL+"/v1/sessions/"+a.SessionID+"/events", "", nil).json(t, &page)
	terminal := 0
	for _, ev := range page.Events {
		if agate.Terminal(ev.Type) {
			terminal++
		}
	}
	if terminal != 1 {
		t.Fatalf("stored %d terminal events for one turn, want 1", terminal)
	}
}

func TestConcurrentMessagesInOneSessionRunInOrder(t *testing.T) {
	u := newUpstream(t)
	g := start(t, withUpstream(u, nil))
	a := g.send(t, "", "m0")
	for i := 1; i <= 4; i++ {
		g.send(t, a.SessionID, fmt.Sprintf("m%d", i))
	}
	s := g.subscribe(t, a.SessionID, "")
	var finals []string
	for len(finals) < 5 {
		for _, f := range s.untilFinal(t) {
			if f.Event == agate.TypeFinal {
				finals = append(finals, f.Data.Message)
			}
		}
	}
	for i, m := range finals {
		if m != reply(fmt.Sprintf("m%d", i)) {
			t.Fatalf("reply %d = %q; turns ran out of order", i, m)
		}
	}
	// Each turn's prompt holds every earlier exchange: the turns did not overlap.
	calls := u.calls()
	if n := len(calls[4].Messages); n != 1+9 {
		t.Fatalf("fifth turn's prompt has %d messages, want 10", n)
	}
}

func TestMessageQueuedMidStreamDoesNotCutTheStreamOrItsResume(t *testing.T) {
	u := newUpstream(t)
	u.pauseAt(3)
	g := start(t, withUpstream(u, nil))
	a := g.send(t, "", "alpha beta gamma delta")
	s := g.subscribe(t, a.SessionID, "")
	<-u.paused
	var seen []frame
	for len(seen) == 0 || seen[len(seen)-1].Data.Message != "You said: alpha " {
		seen = append(seen, s.next(t))
	}
	g.send(t, a.SessionID, "queued while streaming")
	for seen[len(seen)-1].Event != agate.TypeUserMessage {
		seen = append(seen, s.next(t))
	}
	s.body.Close() // drop right after the queued message arrived
	last := seen[len(seen)-1].ID
	if !strings.Contains(last, ".") {
		t.Fatalf("id %q after a message queued mid-stream lost the stream offset", last)
	}

	s = g.subscribe(t, a.SessionID, last)
	u.release()
	rest := s.untilFinal(t)
	var text string
	for _, f := range append(seen, rest...) {
		if f.Event == agate.TypeStream {
			text += f.Data.Delta
		}
	}
	final := rest[len(rest)-1]
	if text != reply("alpha beta gamma delta") || final.Data.Message != text {
		t.Fatalf("deltas across a queued message and a reconnect read %q; final %q", text, final.Data.Message)
	}
	// The queued message gets its own turn, streamed after the first one ended.
	next := s.untilFinal(t)
	if got := next[len(next)-1].Data.Message; got != reply("queued while streaming") {
		t.Fatalf("queued message answered %q", got)
	}
}

func TestDeletingASessionEndsItsStreamsAndTurns(t *testing.T) {
	u := newUpstream(t)
	u.pauseAt(2)
	g := start(t, withUpstream(u, nil))
	a := g.send(t, "", "doomed")
	g.send(t, a.SessionID, "queued and doomed")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.URL, "http")+"/v1/session/"+a.SessionID+"/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	<-u.paused

	if res := do(t, "DELETE", g.URL+"/v1/sessions/"+a.SessionID, "", nil); res.status != 204 {
		t.Fatalf("delete: %d %s", res.status, res.body)
	}
	for err == nil {
		_, _, err = conn.Read(ctx)
	}
	if websocket.CloseStatus(err) != 4004 {
		t.Fatalf("WebSocket of a deleted session ended with %v, want close 4004", err)
	}
	if res := do(t, "GET", g.URL+"/v1/sessions/"+a.SessionID+"/events", "", nil); res.status != 404 {
		t.Fatalf("events of a deleted session: %d", res.status)
	}
	u.release()
	// The queued turn was dropped: recreating the session id shows only the new message's turn.
	b := g.send(t, a.SessionID, "reborn")
	frames := g.subscribe(t, b.SessionID, "").untilFinal(t)
	if frames[0].Data.Seq != 1 || frames[len(frames)-1].Data.Message != reply("reborn") {
		t.Fatalf("recreated session starts with %+v and ends %q", frames[0].Data, frames[len(frames)-1].Data.Message)
	}
	if n := len(u.calls()); n != 2 {
		t.Fatalf("upstream called %d times; the deleted session's queued turn must not run", n)
	}
}
