// Package turntest holds the conformance suite of turn.Store. Every backend runs the same
// suite: sqlite in every go test, postgres in integration tests.
package turntest

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/turn"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"
)

// Options are what a test needs of the store it opens.
type Options struct {
	// Bus enables the event bus: Accept and Append write outbox records (turn.Outbox).
	Bus bool
	// Origin, when not empty, is the id of the replica that its outbox records name in
	// their agate.HeaderOrigin header.
	Origin string
}

// RunStoreTests checks that the stores made by open keep the contract of turn.Store. Each
// call of open must return a new, empty store configured as o says and register its Close
// with t.Cleanup; Close must tolerate being called again, since one test closes the store
// itself.
func RunStoreTests(t *testing.T, open func(t *testing.T, o Options) turn.Store) {
	bus := Options{Bus: true}
	tests := []struct {
		name string
		opts Options
		run  func(t *testing.T, s turn.Store)
	}{
		{"AcceptCreatesSessionAndPersistsMessage", Options{}, testAcceptCreatesSession},
		{"AcceptIntoExistingSession", Options{}, testAcceptIntoExistingSession},
		{"AcceptWithUnknownSessionIDCreatesIt", Options{}, testAcceptWithUnknownSessionID},
		{"SessionTitleComesFromFirstMessage", Options{}, testSessionTitle},
		{"IdempotentRetryReturnsSameIDs", Options{}, testIdempotentRetry},
		{"IdempotencyKeyReusedWithDifferentBodyConflicts", Options{}, testIdempotencyKeyReused},
		{"ConcurrentIdempotentRetriesStoreOnce", Options{}, testConcurrentIdempotentRetries},
		{"AppendAssignsSeqAndDefaults", Options{}, testAppendAssigns},
		{"ConcurrentAppendsKeepSeqGapFree", Options{}, testConcurrentAppends},
		{"TenantIsolation", Options{}, testTenantIsolation},
		{"EventsPaging", Options{}, testEventsPaging},
		{"MessagesReturnsConversationWindow", Options{}, testMessagesWindow},
		{"PendingTurnsUntilTerminalAppended", Options{}, testPendingTurns},
		{"DeleteRemovesEverything", Options{}, testDeleteRemovesEverything},
		{"EphemeralEventsRefused", Options{}, testEphemeralRefused},
		{"AppendToUnknownSessionFails", Options{}, testAppendToUnknownSession},
		{"SessionListingOrderAndPaging", Options{}, testSessionListing},
		{"MetadataRoundTrip", Options{}, testMetadataRoundTrip},
		{"ClosedStoreIsUnavailable", Options{}, testClosedStore},
		{"FinishedAfterTerminalEventOrDelete", Options{}, testFinished},
		{"OutboxEmptyWithoutBus", Options{}, testOutboxEmptyWithoutBus},
		{"OutboxRecordsOfAcceptAndAppend", Options{Bus: true, Origin: "replica-a"}, testOutboxRecords},
		{"DuplicateAcceptAddsNoOutboxRecords", bus, testDuplicateAcceptOutbox},
		{"FailedWritesAddNoOutboxRecords", bus, testFailedWritesOutbox},
		{"DeleteSessionLeavesOutboxRecords", bus, testDeleteLeavesOutbox},
		{"ConcurrentAcceptsKeepOutboxOrderPerSession", bus, testConcurrentOutboxOrder},
		{"ToolStartCarriesItsRequestToExecutors", Options{Bus: true, Origin: "replica-a"}, testToolDispatch},
		{"EnqueueWritesOutboxWithoutBus", Options{Origin: "replica-a"}, testEnqueue},
		{"EnqueueAfterRecordsOfAccept", bus, testEnqueue},
		{"OutboxLeaseHasOneHolder", Options{}, testOutboxLease},
		{"DeadLettersStoredOncePerRecord", Options{}, testDeadLetters},
		{"APIKeyRoundTrip", Options{}, testAPIKeyRoundTrip},
		{"APIKeyDuplicateIDRefused", Options{}, testAPIKeyDuplicateID},
		{"APIKeysListedPerTenantNewestFirst", Options{}, testAPIKeyListing},
		{"RevokeAPIKeyKeepsFirstTime", Options{}, testRevokeAPIKey},
		{"TouchAPIKeyOnlyMovesForward", Options{}, testTouchAPIKey},
		{"ReserveTokensUpToTheLimit", Options{}, testReserveUpToTheLimit},
		{"ReserveTokensWithoutLimit", Options{}, testReserveWithoutLimit},
		{"SettleTokensFreesWhatWasNotUsed", Options{}, testSettleTokens},
		{"ConcurrentReservationsNeverPassTheLimit", Options{}, testConcurrentReservations},
		{"TokenCountersArePerTenantPersonaAndDay", Options{}, testTokenCountersAreSeparate},
		{"NegativeReservationRefused", Options{}, testNegativeReservationRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, open(t, tt.opts)) })
	}
}

// opts compares metadata maps by their JSON, the way a store keeps them: 1 equals 1.0 and
// []string{"a"} equals []any{"a"}; a nil map equals an empty one, and so do slices.
var opts = cmp.Options{
	cmp.FilterPath(func(p cmp.Path) bool { return p.Last().Type().Kind() == reflect.Slice }, cmpopts.EquateEmpty()),
	cmp.Transformer("JSON", func(m map[string]any) string {
		if m == nil {
			return "{}"
		}
		b, err := json.Marshal(m)
		if err != nil {
			return fmt.Sprintf("unencodable map: %v", err)
		}
		return string(b)
	}),
}

const (
	acme   = "acme"
	globex = "globex"
	// all is a limit above the number of events any test stores.
	all = 10_000
)

func inbound(tenant, message string) agate.Inbound {
	return agate.Inbound{Tenant: tenant, Subject: "alice", PersonaID: "helper", Message: message}
}

func into(in agate.Inbound, session uuid.UUID) agate.Inbound {
	in.SessionID = session
	return in
}

func event(session uuid.UUID, typ, message string) agate.Event {
	return agate.Event{SessionID: session, Role: agate.RoleAssistant, Type: typ, Message: message}
}

func final(session uuid.UUID, status, message string) agate.Event {
	ev := event(session, agate.TypeFinal, message)
	ev.Metadata = map[string]any{"status": status}
	return ev
}

func accept(t *testing.T, s turn.Store, in agate.Inbound) agate.Accepted {
	t.Helper()
	acc, err := s.Accept(t.Context(), in)
	if err != nil {
		t.Fatalf("Accept(%q into %v): %v", in.Message, in.SessionID, err)
	}
	return acc
}

func appendEvents(t *testing.T, s turn.Store, done *agate.Turn, evs ...agate.Event) []agate.Event {
	t.Helper()
	got, err := s.Append(t.Context(), done, evs...)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return got
}

func allEvents(t *testing.T, s turn.Store, session uuid.UUID) []agate.Event {
	t.Helper()
	evs, err := s.Events(t.Context(), session, 0, all)
	if err != nil {
		t.Fatalf("Events(%v): %v", session, err)
	}
	return evs
}

func session(t *testing.T, s turn.Store, tenant string, id uuid.UUID) agate.Session {
	t.Helper()
	sess, err := s.Session(t.Context(), tenant, id)
	if err != nil {
		t.Fatalf("Session(%s, %v): %v", tenant, id, err)
	}
	return sess
}

func sessionIDs(t *testing.T, s turn.Store, tenant string, after uuid.UUID, limit int) []uuid.UUID {
	t.Helper()
	list, err := s.Sessions(t.Context(), tenant, after, limit)
	if err != nil {
		t.Fatalf("Sessions(%s, %v, %d): %v", tenant, after, limit, err)
	}
	ids := []uuid.UUID{}
	for _, sess := range list {
		ids = append(ids, sess.ID)
	}
	return ids
}

func pending(t *testing.T, s turn.Store) []agate.Turn {
	t.Helper()
	turns, err := s.Pending(t.Context())
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	return turns
}

func seqs(evs []agate.Event) []int64 {
	out := []int64{}
	for _, ev := range evs {
		out = append(out, ev.Seq)
	}
	return out
}

func wantCode(t *testing.T, what string, err error, want agate.Code) {
	t.Helper()
	if got := agate.ErrorCode(err); got != want {
		t.Errorf("%s: error code %q (%v), want %q", what, got, err, want)
	}
}

func diff(t *testing.T, what string, want, got any) {
	t.Helper()
	if d := cmp.Diff(want, got, opts); d != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", what, d)
	}
}

// recent reports whether tm is a plausible store timestamp: set, and within a minute of now.
func recent(tm time.Time) bool {
	return !tm.IsZero() && time.Since(tm).Abs() < time.Minute
}

func testAcceptCreatesSession(t *testing.T, s turn.Store) {
	in := inbound(acme, "Hello,\n  world")
	in.Attachments = []string{"file-1", "file-2"}
	in.Metadata = map[string]any{"client": "web"}
	acc := accept(t, s, in)

	id := acc.Event.SessionID
	if id == uuid.Nil || acc.Event.EventID == uuid.Nil {
		t.Fatalf("Accept gave session %v, event %v; want ids assigned", id, acc.Event.EventID)
	}
	if acc.Duplicate {
		t.Error("first Accept is marked Duplicate")
	}
	if !recent(acc.Event.CreatedAt) {
		t.Errorf("event CreatedAt = %v, want now", acc.Event.CreatedAt)
	}
	wantEvent := agate.Event{
		EventID:   acc.Event.EventID,
		Seq:       1,
		SessionID: id,
		PersonaID: "helper",
		Role:      agate.RoleUser,
		Type:      agate.TypeUserMessage,
		Message:   "Hello,\n  world",
		Metadata:  map[string]any{"client": "web", "attachments": []string{"file-1", "file-2"}},
		Version:   agate.Version,
		CreatedAt: acc.Event.CreatedAt,
	}
	diff(t, "accepted event", wantEvent, acc.Event)
	diff(t, "turn", agate.Turn{ID: wantEvent.EventID, SessionID: id, Tenant: acme, PersonaID: "helper", Seq: 1}, acc.Turn)
	if _, ok := in.Metadata["attachments"]; ok {
		t.Error("Accept added attachments to the caller's metadata map")
	}

	diff(t, "stored events", []agate.Event{acc.Event}, allEvents(t, s, id))

	sess := session(t, s, acme, id)
	if !recent(sess.CreatedAt) || sess.UpdatedAt.Before(sess.CreatedAt) {
		t.Errorf("session created %v, updated %v; want now, updated not before created", sess.CreatedAt, sess.UpdatedAt)
	}
	wantSession := agate.Session{
		ID: id, Tenant: acme, PersonaID: "helper", Subject: "alice", Title: "Hello, world",
		LastSeq: 1, CreatedAt: sess.CreatedAt, UpdatedAt: sess.UpdatedAt,
	}
	diff(t, "session", wantSession, sess)
	diff(t, "pending turns", []agate.Turn{acc.Turn}, pending(t, s))
}

func testAcceptIntoExistingSession(t *testing.T, s turn.Store) {
	first := accept(t, s, inbound(acme, "first"))
	id := first.Event.SessionID
	before := session(t, s, acme, id)

	second := accept(t, s, into(inbound(acme, "second"), id))
	if second.Event.SessionID != id || second.Event.Seq != 2 || second.Turn.Seq != 2 {
		t.Errorf("second Accept: session %v seq %d (turn seq %d), want session %v seq 2",
			second.Event.SessionID, second.Event.Seq, second.Turn.Seq, id)
	}
	diff(t, "events", []agate.Event{first.Event, second.Event}, allEvents(t, s, id))

	after := session(t, s, acme, id)
	if after.LastSeq != 2 {
		t.Errorf("LastSeq = %d, want 2", after.LastSeq)
	}
	if !after.CreatedAt.Equal(before.CreatedAt) || after.UpdatedAt.Before(before.UpdatedAt) {
		t.Errorf("times went from created %v updated %v to created %v updated %v",
			before.CreatedAt, before.UpdatedAt, after.CreatedAt, after.UpdatedAt)
	}
	diff(t, "pending turns", []agate.Turn{first.Turn, second.Turn}, pending(t, s))
}

func testAcceptWithUnknownSessionID(t *testing.T, s turn.Store) {
	id := uuid.New()
	acc := accept(t, s, into(inbound(acme, "hi"), id))
	if acc.Event.SessionID != id || acc.Turn.SessionID != id || acc.Event.Seq != 1 {
		t.Errorf("Accept into new id %v: session %v, turn session %v, seq %d; want that id, seq 1",
			id, acc.Event.SessionID, acc.Turn.SessionID, acc.Event.Seq)
	}
	if sess := session(t, s, acme, id); sess.Tenant != acme || sess.LastSeq != 1 {
		t.Errorf("session = %+v, want tenant %s, LastSeq 1", sess, acme)
	}
}

func testSessionTitle(t *testing.T, s turn.Store) {
	long := strings.Repeat("é", 100)
	for _, tc := range []struct{ message, want string }{
		{"  Plan my\ttrip\nto Lisbon  ", "Plan my trip to Lisbon"},
		{long, strings.Repeat("é", 80)},
	} {
		first := accept(t, s, inbound(acme, tc.message))
		accept(t, s, into(inbound(acme, "a later message"), first.Event.SessionID))
		got := session(t, s, acme, first.Event.SessionID).Title
		if got != tc.want {
			t.Errorf("title of a session started with %q = %q, want %q", tc.message, got, tc.want)
		}
		if n := utf8.RuneCountInString(got); n > 80 {
			t.Errorf("title has %d runes, want at most 80", n)
		}
	}
}

func testIdempotentRetry(t *testing.T, s turn.Store) {
	in := inbound(acme, "hello")
	in.IdempotencyKey, in.RequestHash = "key-1", "hash-1"
	first := accept(t, s, in)
	retry := accept(t, s, in)

	if first.Duplicate || !retry.Duplicate {
		t.Errorf("Duplicate = %v then %v, want false then true", first.Duplicate, retry.Duplicate)
	}
	diff(t, "retried turn", first.Turn, retry.Turn)
	diff(t, "retried event", first.Event, retry.Event)
	diff(t, "sessions", []uuid.UUID{first.Turn.SessionID}, sessionIDs(t, s, acme, uuid.Nil, 10))
	diff(t, "events", []agate.Event{first.Event}, allEvents(t, s, first.Turn.SessionID))
	diff(t, "pending turns", []agate.Turn{first.Turn}, pending(t, s))

	// Keys are scoped to the tenant.
	in.Tenant = globex
	other := accept(t, s, in)
	if other.Duplicate || other.Turn.SessionID == first.Turn.SessionID {
		t.Errorf("same key in another tenant: Duplicate %v, session %v; want a new turn in a new session",
			other.Duplicate, other.Turn.SessionID)
	}
}

func testIdempotencyKeyReused(t *testing.T, s turn.Store) {
	in := inbound(acme, "hello")
	in.IdempotencyKey, in.RequestHash = "key-1", "hash-1"
	first := accept(t, s, in)

	in.Message, in.RequestHash = "something else", "hash-2"
	_, err := s.Accept(t.Context(), in)
	wantCode(t, "Accept with a reused key", err, agate.EIdempotencyReuse)
	diff(t, "events", []agate.Event{first.Event}, allEvents(t, s, first.Turn.SessionID))
	diff(t, "pending turns", []agate.Turn{first.Turn}, pending(t, s))
}

func testConcurrentIdempotentRetries(t *testing.T, s turn.Store) {
	in := inbound(acme, "hello")
	in.IdempotencyKey, in.RequestHash = "key-1", "hash-1"
	const n = 16
	results := make([]agate.Accepted, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			acc, err := s.Accept(t.Context(), in)
			if err != nil {
				t.Errorf("Accept %d: %v", i, err)
			}
			results[i] = acc
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	firsts := 0
	for i, acc := range results {
		if !acc.Duplicate {
			firsts++
		}
		diff(t, fmt.Sprintf("event of Accept %d", i), results[0].Event, acc.Event)
	}
	if firsts != 1 {
		t.Errorf("%d Accepts were not duplicates, want 1", firsts)
	}
	id := results[0].Turn.SessionID
	diff(t, "sessions", []uuid.UUID{id}, sessionIDs(t, s, acme, uuid.Nil, 10))
	if evs := allEvents(t, s, id); len(evs) != 1 {
		t.Errorf("stored %d events, want 1", len(evs))
	}
	if turns := pending(t, s); len(turns) != 1 {
		t.Errorf("%d pending turns, want 1", len(turns))
	}
}

func testAppendAssigns(t *testing.T, s turn.Store) {
	acc := accept(t, s, inbound(acme, "hi"))
	id := acc.Event.SessionID
	given := uuid.New()
	tool := event(id, agate.TypeToolStart, "")
	tool.Role, tool.EventID, tool.Version = agate.RoleTool, given, "custom-v"
	tool.Metadata = map[string]any{"tool": "search"}

	got := appendEvents(t, s, &acc.Turn, event(id, agate.TypeStarted, ""), tool, final(id, agate.StatusOK, "hello"))

	diff(t, "seqs", []int64{2, 3, 4}, seqs(got))
	if len(got) != 3 {
		t.FailNow()
	}
	if got[0].EventID == uuid.Nil || got[1].EventID != given || got[2].EventID == uuid.Nil {
		t.Errorf("event ids %v, %v, %v; want assigned, %v, assigned", got[0].EventID, got[1].EventID, got[2].EventID, given)
	}
	if got[0].Version != agate.Version || got[1].Version != "custom-v" {
		t.Errorf("versions %q, %q; want %q (default), %q (given)", got[0].Version, got[1].Version, agate.Version, "custom-v")
	}
	if got[0].Metadata == nil {
		t.Error("Append returned a nil Metadata map")
	}
	for i, ev := range got {
		if !recent(ev.CreatedAt) || (i > 0 && ev.CreatedAt.Before(got[i-1].CreatedAt)) {
			t.Errorf("event %d CreatedAt %v: want now, not before the previous event", i, ev.CreatedAt)
		}
	}
	diff(t, "stored events", got, mustEvents(t, s, id, 1, all))
	if sess := session(t, s, acme, id); sess.LastSeq != 4 {
		t.Errorf("LastSeq = %d, want 4", sess.LastSeq)
	}

	none, err := s.Append(t.Context(), nil)
	if err != nil || len(none) != 0 {
		t.Errorf("Append of no events = %v, %v; want nothing, no error", none, err)
	}
}

func mustEvents(t *testing.T, s turn.Store, id uuid.UUID, after int64, limit int) []agate.Event {
	t.Helper()
	evs, err := s.Events(t.Context(), id, after, limit)
	if err != nil {
		t.Fatalf("Events(%v, %d, %d): %v", id, after, limit, err)
	}
	return evs
}

func testConcurrentAppends(t *testing.T, s turn.Store) {
	first := accept(t, s, inbound(acme, "start"))
	id := first.Event.SessionID
	const workers, appends, acceptEvery = 8, 25, 5

	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var last int64
			for i := range appends {
				evs, err := s.Append(t.Context(), nil, event(id, agate.TypeContext, fmt.Sprintf("w%d-%d", w, i)))
				if err != nil {
					t.Errorf("worker %d Append %d: %v", w, i, err)
					return
				}
				if evs[0].Seq <= last {
					t.Errorf("worker %d got seq %d after %d", w, evs[0].Seq, last)
				}
				last = evs[0].Seq
				if i%acceptEvery == 0 {
					if _, err := s.Accept(t.Context(), into(inbound(acme, "more"), id)); err != nil {
						t.Errorf("worker %d Accept: %v", w, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()

	n := 1 + workers*appends + workers*(appends/acceptEvery)
	evs := allEvents(t, s, id)
	want := make([]int64, n)
	for i := range want {
		want[i] = int64(i + 1)
	}
	diff(t, "seqs", want, seqs(evs))
	ids := map[uuid.UUID]bool{}
	for _, ev := range evs {
		if ids[ev.EventID] {
			t.Errorf("event id %v stored twice", ev.EventID)
		}
		ids[ev.EventID] = true
	}
	if sess := session(t, s, acme, id); sess.LastSeq != int64(n) {
		t.Errorf("LastSeq = %d, want %d", sess.LastSeq, n)
	}
}

func testTenantIsolation(t *testing.T, s turn.Store) {
	acc := accept(t, s, inbound(acme, "secret"))
	id := acc.Event.SessionID

	_, err := s.Session(t.Context(), globex, id)
	wantCode(t, "Session from another tenant", err, agate.ESessionNotFound)
	diff(t, "other tenant's sessions", []uuid.UUID{}, sessionIDs(t, s, globex, uuid.Nil, 10))
	_, err = s.Accept(t.Context(), into(inbound(globex, "let me in"), id))
	wantCode(t, "Accept into another tenant's session", err, agate.ESessionNotFound)
	err = s.DeleteSession(t.Context(), globex, id)
	wantCode(t, "DeleteSession of another tenant's session", err, agate.ESessionNotFound)

	diff(t, "events", []agate.Event{acc.Event}, allEvents(t, s, id))
	diff(t, "pending turns", []agate.Turn{acc.Turn}, pending(t, s))
	if sess := session(t, s, acme, id); sess.LastSeq != 1 {
		t.Errorf("owner's session LastSeq = %d, want 1", sess.LastSeq)
	}
}

func testEventsPaging(t *testing.T, s turn.Store) {
	acc := accept(t, s, inbound(acme, "hi"))
	id := acc.Event.SessionID
	for i := range 9 {
		appendEvents(t, s, nil, event(id, agate.TypeContext, fmt.Sprint(i)))
	}

	var pages [][]int64
	var after int64
	for range 5 {
		page := mustEvents(t, s, id, after, 4)
		pages = append(pages, seqs(page))
		if len(page) == 0 {
			break
		}
		after = page[len(page)-1].Seq
	}
	diff(t, "pages", [][]int64{{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10}, {}}, pages)
	diff(t, "events after 7, limit 2", []int64{8, 9}, seqs(mustEvents(t, s, id, 7, 2)))

	evs, err := s.Events(t.Context(), uuid.New(), 0, 10)
	if (err != nil && agate.ErrorCode(err) != agate.ESessionNotFound) || len(evs) != 0 {
		t.Errorf("Events of an unknown session = %v, %v; want none", evs, err)
	}
}

func testMessagesWindow(t *testing.T, s turn.Store) {
	// Seqs: 1 u1, 2 started, 3 a1 ok, 4 u2, 5 final error, 6 u3, 7 tool.start, 8 tool.result,
	// 9 a3 ok, 10 u4, 11 final cancelled, 12 final without status.
	u1 := accept(t, s, inbound(acme, "u1"))
	id := u1.Event.SessionID
	appendEvents(t, s, &u1.Turn, event(id, agate.TypeStarted, ""), final(id, agate.StatusOK, "a1"))
	u2 := accept(t, s, into(inbound(acme, "u2"), id))
	appendEvents(t, s, &u2.Turn, final(id, agate.StatusError, "oops"))
	u3 := accept(t, s, into(inbound(acme, "u3"), id))
	appendEvents(t, s, &u3.Turn, event(id, agate.TypeToolStart, ""), event(id, agate.TypeToolResult, "42"),
		final(id, agate.StatusOK, "a3"))
	u4 := accept(t, s, into(inbound(acme, "u4"), id))
	appendEvents(t, s, &u4.Turn, final(id, agate.StatusCancelled, ""))
	appendEvents(t, s, nil, event(id, agate.TypeFinal, "no status"))

	for _, tc := range []struct {
		upTo  int64
		limit int
		want  []int64
	}{
		{upTo: 100, limit: 100, want: []int64{1, 3, 4, 6, 9, 10}},
		{upTo: 9, limit: 3, want: []int64{4, 6, 9}},
		{upTo: 5, limit: 10, want: []int64{1, 3, 4}},
		{upTo: 12, limit: 1, want: []int64{10}},
		{upTo: 0, limit: 10, want: []int64{}},
	} {
		got, err := s.Messages(t.Context(), id, tc.upTo, tc.limit)
		if err != nil {
			t.Fatalf("Messages(upTo %d, limit %d): %v", tc.upTo, tc.limit, err)
		}
		diff(t, fmt.Sprintf("Messages(upTo %d, limit %d) seqs", tc.upTo, tc.limit), tc.want, seqs(got))
	}

	got, err := s.Messages(t.Context(), id, 3, 10)
	if err != nil {
		t.Fatal(err)
	}
	stored := allEvents(t, s, id)
	diff(t, "messages are the stored events", []agate.Event{stored[0], stored[2]}, got)
}

func testPendingTurns(t *testing.T, s turn.Store) {
	t1 := accept(t, s, inbound(acme, "one")).Turn
	t2 := accept(t, s, inbound(globex, "two")).Turn
	t3 := accept(t, s, into(inbound(acme, "three"), t1.SessionID)).Turn
	diff(t, "pending after accepts", []agate.Turn{t1, t2, t3}, pending(t, s))

	appendEvents(t, s, &t2, final(t2.SessionID, agate.StatusOK, "done"))
	diff(t, "pending after t2's final", []agate.Turn{t1, t3}, pending(t, s))

	appendEvents(t, s, &t1, event(t1.SessionID, agate.TypeStarted, ""))
	appendEvents(t, s, nil, final(t1.SessionID, agate.StatusOK, "not marked"))
	diff(t, "pending after non-terminal and unmarked events", []agate.Turn{t1, t3}, pending(t, s))

	errEv := event(t1.SessionID, agate.TypeError, "boom")
	errEv.Metadata = map[string]any{"status": agate.StatusError, "code": string(agate.EUpstream)}
	appendEvents(t, s, &t1, errEv)
	diff(t, "pending after t1's error", []agate.Turn{t3}, pending(t, s))

	appendEvents(t, s, &t3, final(t3.SessionID, agate.StatusCancelled, ""))
	diff(t, "pending at the end", []agate.Turn{}, pending(t, s))
}

func testDeleteRemovesEverything(t *testing.T, s turn.Store) {
	in := inbound(acme, "forget me")
	in.IdempotencyKey, in.RequestHash = "key-1", "hash-1"
	acc := accept(t, s, in)
	id := acc.Turn.SessionID
	appendEvents(t, s, nil, event(id, agate.TypeStarted, ""))
	kept := accept(t, s, inbound(acme, "keep me"))

	if err := s.DeleteSession(t.Context(), acme, id); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}

	_, err := s.Session(t.Context(), acme, id)
	wantCode(t, "Session after delete", err, agate.ESessionNotFound)
	err = s.DeleteSession(t.Context(), acme, id)
	wantCode(t, "second DeleteSession", err, agate.ESessionNotFound)
	_, err = s.Append(t.Context(), nil, event(id, agate.TypeStarted, ""))
	wantCode(t, "Append after delete", err, agate.ESessionNotFound)
	diff(t, "events after delete", []agate.Event{}, mustEvents(t, s, id, 0, all))
	msgs, err := s.Messages(t.Context(), id, all, all)
	if err != nil || len(msgs) != 0 {
		t.Errorf("Messages after delete = %v, %v; want none", msgs, err)
	}
	diff(t, "sessions after delete", []uuid.UUID{kept.Turn.SessionID}, sessionIDs(t, s, acme, uuid.Nil, 10))
	diff(t, "pending after delete", []agate.Turn{kept.Turn}, pending(t, s))

	// The idempotency key went with the session: the same request is a new turn.
	again := accept(t, s, in)
	if again.Duplicate || again.Turn.SessionID == id {
		t.Errorf("Accept with the deleted session's key: Duplicate %v, session %v; want a new turn in a new session",
			again.Duplicate, again.Turn.SessionID)
	}
}

func testEphemeralRefused(t *testing.T, s turn.Store) {
	acc := accept(t, s, inbound(acme, "hi"))
	id := acc.Event.SessionID
	for _, typ := range []string{agate.TypeStream} {
		ev := event(id, typ, "partial")
		ev.Delta = "partial"
		_, err := s.Append(t.Context(), &acc.Turn, ev)
		wantCode(t, "Append of "+typ, err, agate.EInvalid)
	}
	_, err := s.Append(t.Context(), &acc.Turn, final(id, agate.StatusOK, "done"), event(id, agate.TypeStream, "x"))
	wantCode(t, "Append of a final and a stream event", err, agate.EInvalid)

	diff(t, "events", []agate.Event{acc.Event}, allEvents(t, s, id))
	diff(t, "pending turns", []agate.Turn{acc.Turn}, pending(t, s))
	if sess := session(t, s, acme, id); sess.LastSeq != 1 {
		t.Errorf("LastSeq = %d, want 1", sess.LastSeq)
	}
}

func testAppendToUnknownSession(t *testing.T, s turn.Store) {
	_, err := s.Append(t.Context(), nil, event(uuid.New(), agate.TypeStarted, ""))
	wantCode(t, "Append to an unknown session", err, agate.ESessionNotFound)

	acc := accept(t, s, inbound(acme, "hi"))
	id := acc.Event.SessionID
	_, err = s.Append(t.Context(), &acc.Turn, final(id, agate.StatusOK, "done"), event(uuid.New(), agate.TypeStarted, ""))
	wantCode(t, "Append of a batch with an unknown session", err, agate.ESessionNotFound)
	diff(t, "events", []agate.Event{acc.Event}, allEvents(t, s, id))
	diff(t, "pending turns", []agate.Turn{acc.Turn}, pending(t, s))
}

func testSessionListing(t *testing.T, s turn.Store) {
	var ids []uuid.UUID
	for i := range 5 {
		ids = append(ids, accept(t, s, inbound(acme, fmt.Sprint("session ", i))).Turn.SessionID)
	}
	accept(t, s, inbound(globex, "elsewhere"))
	appendEvents(t, s, nil, event(ids[1], agate.TypeContext, "touch"))

	want := []uuid.UUID{ids[1], ids[4], ids[3], ids[2], ids[0]}
	diff(t, "all sessions", want, sessionIDs(t, s, acme, uuid.Nil, 10))

	var pages [][]uuid.UUID
	after := uuid.Nil
	for range 5 {
		page := sessionIDs(t, s, acme, after, 2)
		pages = append(pages, page)
		if len(page) == 0 {
			break
		}
		after = page[len(page)-1]
	}
	diff(t, "pages", [][]uuid.UUID{want[0:2], want[2:4], want[4:5], {}}, pages)

	list, err := s.Sessions(t.Context(), acme, uuid.Nil, 10)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(list); i++ {
		if list[i].UpdatedAt.After(list[i-1].UpdatedAt) {
			t.Errorf("session %d updated %v after session %d (%v)", i, list[i].UpdatedAt, i-1, list[i-1].UpdatedAt)
		}
	}
	if list, err := s.Sessions(t.Context(), acme, uuid.New(), 10); err == nil && len(list) != 0 {
		t.Errorf("Sessions after an unknown id = %d sessions, want none or an error", len(list))
	}
}

func testMetadataRoundTrip(t *testing.T, s turn.Store) {
	meta := map[string]any{
		"s":      "héllo 👋 \"quoted\" <b>&</b>",
		"n":      1.5,
		"i":      42,
		"b":      true,
		"null":   nil,
		"list":   []any{1, "two", false},
		"nested": map[string]any{"deep": map[string]any{"k": "v"}},
	}
	in := inbound(acme, "ünïcödé ✓\nsecond line")
	in.Metadata = meta
	acc := accept(t, s, in)
	id := acc.Event.SessionID

	tool := event(id, agate.TypeToolResult, `{"json": "as text"}`)
	tool.Role, tool.PersonaID, tool.Metadata = agate.RoleTool, "helper", meta
	bare := event(id, agate.TypeContext, "")
	appendEvents(t, s, nil, tool, bare)

	evs := allEvents(t, s, id)
	if len(evs) != 3 {
		t.Fatalf("stored %d events, want 3", len(evs))
	}
	diff(t, "accepted metadata", meta, evs[0].Metadata)
	diff(t, "accepted event", acc.Event, evs[0])
	if evs[0].Message != in.Message {
		t.Errorf("message = %q, want %q", evs[0].Message, in.Message)
	}
	diff(t, "appended metadata", meta, evs[1].Metadata)
	if evs[1].Message != tool.Message || evs[1].PersonaID != "helper" || evs[1].Role != agate.RoleTool {
		t.Errorf("appended event = %+v, want message %q, persona helper, role tool", evs[1], tool.Message)
	}
	if evs[2].Metadata == nil || len(evs[2].Metadata) != 0 {
		t.Errorf("metadata of an event stored without any = %#v, want an empty map", evs[2].Metadata)
	}

	plain := accept(t, s, inbound(acme, "no metadata"))
	if stored := allEvents(t, s, plain.Event.SessionID); stored[0].Metadata == nil || len(stored[0].Metadata) != 0 {
		t.Errorf("metadata of a message without any = %#v, want an empty map", stored[0].Metadata)
	}
	if sess := session(t, s, acme, id); sess.Metadata == nil {
		t.Error("session Metadata is nil, want an empty map")
	}
}

func testClosedStore(t *testing.T, s turn.Store) {
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	acc := accept(t, s, inbound(acme, "hi"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wantCode(t, "Ping after Close", s.Ping(t.Context()), agate.EUnavailable)
	_, err := s.Session(t.Context(), acme, acc.Turn.SessionID)
	wantCode(t, "Session after Close", err, agate.EUnavailable)
	_, err = s.Accept(t.Context(), inbound(acme, "hi"))
	wantCode(t, "Accept after Close", err, agate.EUnavailable)
	_, err = s.Append(t.Context(), nil, event(acc.Turn.SessionID, agate.TypeStarted, ""))
	wantCode(t, "Append after Close", err, agate.EUnavailable)
	_, err = s.Finished(t.Context(), acc.Turn.ID)
	wantCode(t, "Finished after Close", err, agate.EUnavailable)
	_, err = s.Unsent(t.Context(), 10)
	wantCode(t, "Unsent after Close", err, agate.EUnavailable)
	wantCode(t, "MarkSent after Close", s.MarkSent(t.Context(), 1), agate.EUnavailable)
	err = s.Enqueue(t.Context(), agate.OutboxRecord{Topic: "tool.requests", Key: "k", Payload: []byte("{}")})
	wantCode(t, "Enqueue after Close", err, agate.EUnavailable)
	_, err = s.LeaseOutbox(t.Context(), "relay", time.Minute)
	wantCode(t, "LeaseOutbox after Close", err, agate.EUnavailable)
	err = s.AddDeadLetter(t.Context(), agate.DeadLetter{Topic: "x", Payload: []byte("x")})
	wantCode(t, "AddDeadLetter after Close", err, agate.EUnavailable)
	_, err = s.DeadLetters(t.Context(), "", 0, 10)
	wantCode(t, "DeadLetters after Close", err, agate.EUnavailable)

	key := agate.APIKey{ID: "k9closed00000001", Tenant: acme, Hash: "h", CreatedAt: time.Now()}
	wantCode(t, "CreateAPIKey after Close", s.CreateAPIKey(t.Context(), key), agate.EUnavailable)
	_, err = s.APIKey(t.Context(), key.ID)
	wantCode(t, "APIKey after Close", err, agate.EUnavailable)
	_, err = s.APIKeys(t.Context(), acme)
	wantCode(t, "APIKeys after Close", err, agate.EUnavailable)
	_, err = s.RevokeAPIKey(t.Context(), acme, key.ID, time.Now())
	wantCode(t, "RevokeAPIKey after Close", err, agate.EUnavailable)
	wantCode(t, "TouchAPIKey after Close", s.TouchAPIKey(t.Context(), key.ID, time.Now()), agate.EUnavailable)
	budget := agate.BudgetKey{Tenant: acme, Day: "2025-03-04"}
	_, err = s.ReserveTokens(t.Context(), budget, 1, 100)
	wantCode(t, "ReserveTokens after Close", err, agate.EUnavailable)
	wantCode(t, "SettleTokens after Close", s.SettleTokens(t.Context(), budget, 1, 1), agate.EUnavailable)
	_, err = s.TokenUsage(t.Context(), budget)
	wantCode(t, "TokenUsage after Close", err, agate.EUnavailable)
}
