package turntest

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/turn"
	"github.com/google/uuid"
)

// The cases of turn.Queue's Finished, turn.Outbox and turn.DeadLetters.

func finished(t *testing.T, s turn.Store, id uuid.UUID) bool {
	t.Helper()
	done, err := s.Finished(t.Context(), id)
	if err != nil {
		t.Fatalf("Finished(%v): %v", id, err)
	}
	return done
}

func unsent(t *testing.T, s turn.Store) []agate.OutboxRecord {
	t.Helper()
	recs, err := s.Unsent(t.Context(), all)
	if err != nil {
		t.Fatalf("Unsent: %v", err)
	}
	return recs
}

func markSent(t *testing.T, s turn.Store, ids ...int64) {
	t.Helper()
	if err := s.MarkSent(t.Context(), ids...); err != nil {
		t.Fatalf("MarkSent(%v): %v", ids, err)
	}
}

// decodeEvent reads the payload of a conversation.outbound record.
func decodeEvent(t *testing.T, r agate.OutboxRecord) agate.Event {
	t.Helper()
	var ev agate.Event
	if err := json.Unmarshal(r.Payload, &ev); err != nil {
		t.Fatalf("payload of outbox record %d (%s) is not an event: %v\n%s", r.ID, r.Topic, err, r.Payload)
	}
	return ev
}

// decodeTurn reads the payload of a conversation.inbound record.
func decodeTurn(t *testing.T, r agate.OutboxRecord) agate.Turn {
	t.Helper()
	var turn agate.Turn
	if err := json.Unmarshal(r.Payload, &turn); err != nil {
		t.Fatalf("payload of outbox record %d (%s) is not a turn: %v\n%s", r.ID, r.Topic, err, r.Payload)
	}
	return turn
}

// route is what the relay needs of a record besides its payload.
type route struct {
	Topic, Key string
	Headers    map[string]string
}

func routes(recs []agate.OutboxRecord) []route {
	out := []route{}
	for _, r := range recs {
		out = append(out, route{r.Topic, r.Key, r.Headers})
	}
	return out
}

func recordIDs(recs []agate.OutboxRecord) []int64 {
	out := []int64{}
	for _, r := range recs {
		out = append(out, r.ID)
	}
	return out
}

func testFinished(t *testing.T, s turn.Store) {
	a := accept(t, s, inbound(acme, "one"))
	id := a.Turn.SessionID
	if finished(t, s, a.Turn.ID) {
		t.Error("a turn just accepted is finished")
	}
	appendEvents(t, s, &a.Turn, event(id, agate.TypeStarted, ""))
	appendEvents(t, s, nil, final(id, agate.StatusOK, "not marked"))
	if finished(t, s, a.Turn.ID) {
		t.Error("a turn is finished after a non-terminal event and an unmarked final")
	}
	appendEvents(t, s, &a.Turn, final(id, agate.StatusOK, "done"))
	if !finished(t, s, a.Turn.ID) {
		t.Error("a turn is not finished after its final event")
	}
	if !finished(t, s, uuid.New()) {
		t.Error("an unknown turn is not finished")
	}

	b := accept(t, s, inbound(acme, "two"))
	c := accept(t, s, into(inbound(acme, "three"), b.Turn.SessionID))
	d := accept(t, s, inbound(globex, "four"))
	diff(t, "pending", []agate.Turn{b.Turn, c.Turn, d.Turn}, pending(t, s))
	if err := s.DeleteSession(t.Context(), acme, b.Turn.SessionID); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	if !finished(t, s, b.Turn.ID) || !finished(t, s, c.Turn.ID) {
		t.Error("turns of a deleted session are not finished")
	}
	if finished(t, s, d.Turn.ID) {
		t.Error("the turn of another session is finished after a delete")
	}
	diff(t, "pending after delete", []agate.Turn{d.Turn}, pending(t, s))
}

func testOutboxEmptyWithoutBus(t *testing.T, s turn.Store) {
	in := inbound(acme, "hello")
	in.IdempotencyKey, in.RequestHash = "key-1", "hash-1"
	acc := accept(t, s, in)
	accept(t, s, in)
	id := acc.Turn.SessionID
	appendEvents(t, s, &acc.Turn, event(id, agate.TypeStarted, ""), final(id, agate.StatusOK, "hi"))
	accept(t, s, into(inbound(acme, "more"), id))
	diff(t, "unsent records with the bus disabled", []agate.OutboxRecord{}, unsent(t, s))
}

func testOutboxRecords(t *testing.T, s turn.Store) {
	acc := accept(t, s, inbound(acme, "hello"))
	id := acc.Turn.SessionID
	appended := appendEvents(t, s, &acc.Turn, event(id, agate.TypeStarted, ""), final(id, agate.StatusOK, "hi there"))
	stored := allEvents(t, s, id)
	if len(stored) != 3 {
		t.Fatalf("stored %d events, want 3", len(stored))
	}
	diff(t, "appended events", stored[1:], appended)

	recs := unsent(t, s)
	key, origin := id.String(), map[string]string{agate.HeaderOrigin: "replica-a"}
	diff(t, "routes", []route{
		{agate.TopicOutbound, key, origin},
		{agate.TopicInbound, key, origin},
		{agate.TopicOutbound, key, origin},
		{agate.TopicOutbound, key, origin},
	}, routes(recs))
	if len(recs) != 4 {
		t.FailNow()
	}
	for i, r := range recs {
		if !json.Valid(r.Payload) {
			t.Errorf("payload of record %d is not JSON: %q", i, r.Payload)
		}
		if i > 0 && r.ID <= recs[i-1].ID {
			t.Errorf("record %d has id %d after %d, want increasing ids", i, r.ID, recs[i-1].ID)
		}
	}
	diff(t, "user event record", stored[0], decodeEvent(t, recs[0]))
	diff(t, "turn record", acc.Turn, decodeTurn(t, recs[1]))
	var fields map[string]any
	if err := json.Unmarshal(recs[1].Payload, &fields); err != nil || fields["turn_id"] != acc.Turn.ID.String() {
		t.Errorf("turn record payload %s: want the agate.Turn JSON with turn_id %v", recs[1].Payload, acc.Turn.ID)
	}
	diff(t, "started event record", stored[1], decodeEvent(t, recs[2]))
	diff(t, "final event record", stored[2], decodeEvent(t, recs[3]))

	markSent(t, s, recs[0].ID, recs[1].ID)
	diff(t, "unsent after marking the first two", recs[2:], unsent(t, s))
	markSent(t, s, recs[0].ID, recs[3].ID+1_000_000)
	markSent(t, s)
	diff(t, "unsent after marking sent and unknown ids", recs[2:], unsent(t, s))

	first, err := s.Unsent(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	diff(t, "Unsent(1)", recs[2:3], first)
	if none, err := s.Unsent(t.Context(), 0); err != nil || len(none) != 0 {
		t.Errorf("Unsent(0) = %v, %v; want none", none, err)
	}

	// Ids keep increasing when the outbox runs empty.
	markSent(t, s, recs[2].ID, recs[3].ID)
	diff(t, "unsent after marking all", []agate.OutboxRecord{}, unsent(t, s))
	accept(t, s, into(inbound(acme, "again"), id))
	more := unsent(t, s)
	if len(more) != 2 || more[0].ID <= recs[3].ID {
		t.Errorf("records after the outbox ran empty have ids %v, want 2 above %d", recordIDs(more), recs[3].ID)
	}
}

func testDuplicateAcceptOutbox(t *testing.T, s turn.Store) {
	in := inbound(acme, "hello")
	in.IdempotencyKey, in.RequestHash = "key-1", "hash-1"
	accept(t, s, in)
	want := unsent(t, s)
	if len(want) != 2 {
		t.Fatalf("Accept wrote %d outbox records, want 2", len(want))
	}
	if retry := accept(t, s, in); !retry.Duplicate {
		t.Fatal("retry is not a Duplicate")
	}
	in.RequestHash = "hash-2"
	_, err := s.Accept(t.Context(), in)
	wantCode(t, "Accept with a reused key", err, agate.EIdempotencyReuse)
	diff(t, "unsent after duplicates", want, unsent(t, s))
}

func testFailedWritesOutbox(t *testing.T, s turn.Store) {
	acc := accept(t, s, inbound(acme, "hi"))
	id := acc.Turn.SessionID
	want := unsent(t, s)

	_, err := s.Append(t.Context(), nil, event(uuid.New(), agate.TypeStarted, ""))
	wantCode(t, "Append to an unknown session", err, agate.ESessionNotFound)
	_, err = s.Append(t.Context(), &acc.Turn, final(id, agate.StatusOK, "done"), event(uuid.New(), agate.TypeStarted, ""))
	wantCode(t, "Append of a batch with an unknown session", err, agate.ESessionNotFound)
	_, err = s.Append(t.Context(), &acc.Turn, final(id, agate.StatusOK, "done"), event(id, agate.TypeStream, "x"))
	wantCode(t, "Append of a batch with a stream event", err, agate.EInvalid)
	again := event(id, agate.TypeContext, "")
	again.EventID = acc.Event.EventID
	_, err = s.Append(t.Context(), &acc.Turn, final(id, agate.StatusOK, "done"), again)
	wantCode(t, "Append of a batch with an event stored already", err, agate.EInvalid)
	_, err = s.Accept(t.Context(), into(inbound(globex, "let me in"), id))
	wantCode(t, "Accept into another tenant's session", err, agate.ESessionNotFound)

	diff(t, "unsent after failed writes", want, unsent(t, s))
	diff(t, "events after failed writes", []agate.Event{acc.Event}, allEvents(t, s, id))
	if finished(t, s, acc.Turn.ID) {
		t.Error("the turn is finished by a failed Append")
	}
}

func testDeleteLeavesOutbox(t *testing.T, s turn.Store) {
	acc := accept(t, s, inbound(acme, "forget me"))
	appendEvents(t, s, nil, event(acc.Turn.SessionID, agate.TypeStarted, ""))
	want := unsent(t, s)
	if len(want) != 3 {
		t.Fatalf("%d outbox records, want 3", len(want))
	}
	if err := s.DeleteSession(t.Context(), acme, acc.Turn.SessionID); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	diff(t, "unsent after delete", want, unsent(t, s))
}

func testConcurrentOutboxOrder(t *testing.T, s turn.Store) {
	const sessions, workers, rounds = 4, 8, 12
	ids := make([]uuid.UUID, sessions)
	for i := range ids {
		ids[i] = accept(t, s, inbound(acme, fmt.Sprint("session ", i))).Turn.SessionID
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				id := ids[(w+i)%sessions]
				if _, err := s.Accept(t.Context(), into(inbound(acme, fmt.Sprintf("w%d-%d", w, i)), id)); err != nil {
					t.Errorf("worker %d Accept %d: %v", w, i, err)
					return
				}
				if i%3 == 0 {
					evs := []agate.Event{event(id, agate.TypeContext, "a"), event(id, agate.TypeContext, "b")}
					if _, err := s.Append(t.Context(), nil, evs...); err != nil {
						t.Errorf("worker %d Append %d: %v", w, i, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	recs := unsent(t, s)
	appends := workers * ((rounds + 2) / 3) * 2
	if want := 2*(sessions+workers*rounds) + appends; len(recs) != want {
		t.Errorf("%d outbox records, want %d", len(recs), want)
	}
	// Per session: the outbound events in seq order, 1, 2, 3…, each turn right after its
	// user message.
	last := map[string]agate.Event{}
	for i, r := range recs {
		if i > 0 && r.ID <= recs[i-1].ID {
			t.Fatalf("record %d has id %d after %d, want increasing ids", i, r.ID, recs[i-1].ID)
		}
		if len(r.Headers) != 0 {
			t.Errorf("record %d has headers %v, want none (no origin)", r.ID, r.Headers)
		}
		prev := last[r.Key]
		switch r.Topic {
		case agate.TopicOutbound:
			ev := decodeEvent(t, r)
			if prev.Type == agate.TypeUserMessage {
				t.Fatalf("record %d: event seq %d of session %s follows user message seq %d, want its turn first",
					r.ID, ev.Seq, r.Key, prev.Seq)
			}
			if ev.SessionID.String() != r.Key || ev.Seq != prev.Seq+1 {
				t.Fatalf("record %d: event seq %d of session %v under key %s after seq %d; want seq %d of that session",
					r.ID, ev.Seq, ev.SessionID, r.Key, prev.Seq, prev.Seq+1)
			}
			last[r.Key] = ev
		case agate.TopicInbound:
			turn := decodeTurn(t, r)
			if turn.SessionID.String() != r.Key || turn.ID != prev.EventID || turn.Seq != prev.Seq ||
				prev.Type != agate.TypeUserMessage {
				t.Fatalf("record %d: turn %+v under key %s after event %s seq %d (%s); want the turn of that user message",
					r.ID, turn, r.Key, prev.EventID, prev.Seq, prev.Type)
			}
			prev.Type = "" // its turn is recorded
			last[r.Key] = prev
		default:
			t.Fatalf("record %d has topic %q", r.ID, r.Topic)
		}
	}
	for _, id := range ids {
		if got, want := last[id.String()].Seq, session(t, s, acme, id).LastSeq; got != want {
			t.Errorf("session %v: outbox events up to seq %d, want %d", id, got, want)
		}
		if last[id.String()].Type == agate.TypeUserMessage {
			t.Errorf("session %v: no turn record after the last user message", id)
		}
	}
}

// testEnqueue runs on a store without the bus but with an origin, and on one with the bus
// but without an origin.
func testEnqueue(t *testing.T, s turn.Store) {
	acc := accept(t, s, inbound(acme, "hello"))
	key := acc.Turn.SessionID.String()
	enqueue := func(recs ...agate.OutboxRecord) {
		t.Helper()
		if err := s.Enqueue(t.Context(), recs...); err != nil {
			t.Fatalf("Enqueue: %v", err)
		}
	}
	first := agate.OutboxRecord{ID: 99, Topic: "tool.requests", Key: key, Payload: []byte(`{"call":1,"args":{"q":"x"}}`)}
	second := agate.OutboxRecord{Topic: "tool.requests", Key: "other", Payload: []byte(`[1, "two", null]`),
		Headers: map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}
	third := agate.OutboxRecord{Topic: "tool.results", Key: key, Payload: []byte(`"done"`),
		Headers: map[string]string{agate.HeaderOrigin: "elsewhere"}}
	before := unsent(t, s)
	enqueue(first)
	enqueue()
	enqueue(second, third)

	recs := unsent(t, s)
	if len(recs) != len(before)+3 {
		t.Fatalf("%d unsent records after enqueuing 3 behind %d, want %d", len(recs), len(before), len(before)+3)
	}
	diff(t, "records written before Enqueue", before, recs[:len(before)])
	for i, r := range recs {
		if i > 0 && r.ID <= recs[i-1].ID {
			t.Errorf("record %d has id %d after %d, want increasing ids", i, r.ID, recs[i-1].ID)
		}
	}
	got := recs[len(before):]
	origin := map[string]string{}
	if len(before) == 0 { // the store without the bus has an origin
		origin[agate.HeaderOrigin] = "replica-a"
	}
	traced := map[string]string{"traceparent": second.Headers["traceparent"]}
	if len(before) == 0 {
		traced[agate.HeaderOrigin] = "replica-a"
	}
	diff(t, "routes of enqueued records", []route{
		{first.Topic, first.Key, origin},
		{second.Topic, second.Key, traced},
		{third.Topic, third.Key, third.Headers},
	}, routes(got))
	for i, want := range []agate.OutboxRecord{first, second, third} {
		var a, b any
		if err := json.Unmarshal(got[i].Payload, &b); err != nil {
			t.Errorf("payload of enqueued record %d is not JSON: %v: %q", i, err, got[i].Payload)
			continue
		}
		_ = json.Unmarshal(want.Payload, &a)
		diff(t, fmt.Sprint("payload of enqueued record ", i), a, b)
	}
	if got[0].ID == first.ID {
		t.Errorf("the enqueued record kept the given id %d", first.ID)
	}
	if len(second.Headers) != 1 {
		t.Errorf("Enqueue changed the caller's headers: %v", second.Headers)
	}

	// Refused records: nothing of their batch is written.
	for _, bad := range []agate.OutboxRecord{
		{Key: key, Payload: []byte(`{}`)},
		{Topic: "tool.requests", Payload: []byte(`{}`)},
		{Topic: "tool.requests", Key: key, Payload: []byte(`{not json`)},
		{Topic: "tool.requests", Key: key},
	} {
		err := s.Enqueue(t.Context(), first, bad)
		wantCode(t, fmt.Sprintf("Enqueue of %+v", bad), err, agate.EInvalid)
	}
	diff(t, "unsent after refused records", recs, unsent(t, s))
}

func testOutboxLease(t *testing.T, s turn.Store) {
	const short, long = 300 * time.Millisecond, time.Minute
	lease := func(holder string, ttl time.Duration, want bool) {
		t.Helper()
		got, err := s.LeaseOutbox(t.Context(), holder, ttl)
		if err != nil {
			t.Fatalf("LeaseOutbox(%s, %v): %v", holder, ttl, err)
		}
		if got != want {
			t.Errorf("LeaseOutbox(%s, %v) = %v, want %v", holder, ttl, got, want)
		}
	}
	lease("a", short, true)
	lease("a", long, true) // renewed: now live for a minute
	time.Sleep(short + 100*time.Millisecond)
	lease("b", long, false) // a's first lease expired, the renewed one did not
	lease("a", short, true)
	time.Sleep(short + 100*time.Millisecond)
	lease("b", long, true) // a let it expire
	lease("a", long, false)
	lease("b", long, true)
}

func testDeadLetters(t *testing.T, s turn.Store) {
	x1 := agate.DeadLetter{
		Topic: "prod.conversation.inbound", Partition: 0, Offset: 7,
		Key:     []byte{0xff, 0x00, 'k', 0xfe},
		Payload: []byte("not json \xff\x00\xc3("),
		Headers: map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", agate.HeaderOrigin: "replica-a"},
		Error:   "decode turn: invalid character 'o' in literal null",
	}
	x2 := agate.DeadLetter{Topic: x1.Topic, Partition: 1, Offset: 7, Payload: []byte(`{"turn_id": 1}`), Error: "bad turn id"}
	y1 := agate.DeadLetter{Topic: "prod.tool.results", Partition: 0, Offset: 7, Key: []byte("session"), Payload: []byte{}}
	for _, d := range []agate.DeadLetter{x1, x2, y1} {
		if err := s.AddDeadLetter(t.Context(), d); err != nil {
			t.Fatalf("AddDeadLetter(%s/%d/%d): %v", d.Topic, d.Partition, d.Offset, err)
		}
	}
	again := x1
	again.Payload, again.Error = []byte("another"), "another error"
	if err := s.AddDeadLetter(t.Context(), again); err != nil {
		t.Errorf("AddDeadLetter of a record stored already: %v, want nil", err)
	}

	list := func(topic string, after int64, limit int) []agate.DeadLetter {
		t.Helper()
		got, err := s.DeadLetters(t.Context(), topic, after, limit)
		if err != nil {
			t.Fatalf("DeadLetters(%q, %d, %d): %v", topic, after, limit, err)
		}
		return got
	}
	got := list("", 0, all)
	if len(got) != 3 {
		t.Fatalf("%d dead letters, want 3", len(got))
	}
	for i, d := range got {
		if d.ID <= 0 || (i > 0 && d.ID <= got[i-1].ID) || !recent(d.CreatedAt) {
			t.Errorf("dead letter %d: ID %d, CreatedAt %v; want increasing ids from 1, created now", i, d.ID, d.CreatedAt)
		}
	}
	// What was added, with the store's ID and CreatedAt; no key, no headers read as empty.
	want := []agate.DeadLetter{x1, x2, y1}
	for i := range want {
		want[i].ID, want[i].CreatedAt = got[i].ID, got[i].CreatedAt
	}
	cmpDL := func(what string, want, got []agate.DeadLetter) {
		t.Helper()
		diff(t, what, noNilHeaders(want), noNilHeaders(got))
	}
	cmpDL("all dead letters", want, got)
	cmpDL("dead letters of x", want[:2], list(x1.Topic, 0, all))
	cmpDL("dead letters of y", want[2:], list(y1.Topic, 0, all))
	cmpDL("page after the first", want[1:2], list("", got[0].ID, 1))
	cmpDL("page after the second", want[2:], list("", got[1].ID, 10))
	cmpDL("x after the second", nil, list(x1.Topic, got[1].ID, 10))
	cmpDL("unknown topic", nil, list("prod.nothing", 0, 10))
	cmpDL("limit 0", nil, list("", 0, 0))
}

// noNilHeaders returns a copy of list with nil Headers made empty, so that "no headers"
// compares equal either way (opts does the same for slices).
func noNilHeaders(list []agate.DeadLetter) []agate.DeadLetter {
	out := []agate.DeadLetter{}
	for _, d := range list {
		if d.Headers == nil {
			d.Headers = map[string]string{}
		}
		out = append(out, d)
	}
	return out
}

// testToolDispatch: a tool.start event that carries a request for executors leaves, in the
// transaction that stores it, as a tool.requests record keyed by the request id.
func testToolDispatch(t *testing.T, s turn.Store) {
	acc := accept(t, s, inbound(acme, "use a tool"))
	id := acc.Turn.SessionID
	before := len(unsent(t, s))
	req := agate.ToolRequest{RequestID: uuid.New(), SessionID: id, Tenant: acme, ToolName: "echo",
		Args: json.RawMessage(`{"text":"hi","id":9007199254740993}`), Deadline: time.Now().Add(time.Minute).UTC()}
	start := event(id, agate.TypeToolStart, "")
	start.Metadata = map[string]any{"tool": "echo", "request": req, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	plain := event(id, agate.TypeToolStart, "") // an in-process call: nothing for executors
	plain.Metadata = map[string]any{"tool": "timestamp"}
	appendEvents(t, s, nil, start, plain)

	recs := unsent(t, s)[before:]
	if len(recs) != 3 {
		t.Fatalf("%d outbox records for two tool.start events, want 3 (two events, one request)", len(recs))
	}
	r := recs[1] // after the first event's own record
	if r.Topic != agate.TopicToolRequests || r.Key != req.RequestID.String() ||
		r.Headers["traceparent"] != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" || r.Headers[agate.HeaderOrigin] != "replica-a" {
		t.Fatalf("request record = %s %s %v", r.Topic, r.Key, r.Headers)
	}
	var got agate.ToolRequest
	if err := json.Unmarshal(r.Payload, &got); err != nil || got.RequestID != req.RequestID || got.ToolName != "echo" {
		t.Errorf("request payload %s (%v)", r.Payload, err)
	}
	var args map[string]any
	dec := json.NewDecoder(strings.NewReader(string(got.Args)))
	dec.UseNumber()
	// jsonb may respace the arguments, but a number keeps every digit.
	if err := dec.Decode(&args); err != nil || args["id"] != json.Number("9007199254740993") || args["text"] != "hi" {
		t.Errorf("request arguments %s (%v)", got.Args, err)
	}
	if recs[0].Topic != agate.TopicOutbound || recs[2].Topic != agate.TopicOutbound {
		t.Errorf("topics %s, %s, %s", recs[0].Topic, recs[1].Topic, recs[2].Topic)
	}
}
