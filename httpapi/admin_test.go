package httpapi

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/authn"
	"github.com/agate-gw/agate/sqlite"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
)

// newAdminRig is a whole Server on a real store, whose every caller has scopes.
func newAdminRig(t *testing.T, scopes ...string) (*sqlite.Store, *Server) {
	t.Helper()
	store, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "a.db"), sqlite.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	s := New(Deps{Store: store, Auth: authn.Anonymous{Tenant: "t", Scopes: scopes}},
		slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry(), Config{})
	return store, s
}

// get answers GET target from s: the status and the body.
func get(t *testing.T, s http.Handler, target string) (int, []byte) {
	t.Helper()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec.Code, rec.Body.Bytes()
}

// apiDeadLetter is a dead letter as a client reads it: text fields are pointers, to tell absent from empty.
type apiDeadLetter struct {
	ID          int64             `json:"id"`
	Topic       string            `json:"topic"`
	Partition   int32             `json:"partition"`
	Offset      int64             `json:"offset"`
	Key         []byte            `json:"key"`
	KeyText     *string           `json:"key_text"`
	Payload     []byte            `json:"payload"`
	PayloadText *string           `json:"payload_text"`
	Headers     map[string]string `json:"headers"`
	Error       string            `json:"error"`
	CreatedAt   time.Time         `json:"created_at"`
}

type apiDeadLetters struct {
	DeadLetters []apiDeadLetter `json:"dead_letters"`
	NextAfter   *int64          `json:"next_after"`
}

// listDeadLetters GETs target, wants 200, and decodes the page strictly. CreatedAt is checked
// and zeroed, so that pages compare with cmp.Diff.
func listDeadLetters(t *testing.T, s http.Handler, target string) apiDeadLetters {
	t.Helper()
	code, body := get(t, s, target)
	if code != http.StatusOK {
		t.Fatalf("GET %s = %d %s, want 200", target, code, body)
	}
	var raw any
	if err := json.Unmarshal(body, &raw); err != nil || hasNull(raw) {
		t.Errorf("GET %s has a null or is not JSON (%v): %s", target, err, body)
	}
	var page apiDeadLetters
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&page); err != nil {
		t.Fatalf("GET %s: %v in %s", target, err, body)
	}
	if page.DeadLetters == nil {
		t.Fatalf("GET %s has no dead_letters list: %s", target, body)
	}
	for i := range page.DeadLetters {
		if page.DeadLetters[i].CreatedAt.IsZero() {
			t.Errorf("GET %s: dead letter %d has no created_at", target, page.DeadLetters[i].ID)
		}
		page.DeadLetters[i].CreatedAt = time.Time{}
	}
	return page
}

// hasNull reports whether the decoded JSON v holds a null anywhere.
func hasNull(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case map[string]any:
		for _, e := range v {
			if hasNull(e) {
				return true
			}
		}
	case []any:
		for _, e := range v {
			if hasNull(e) {
				return true
			}
		}
	}
	return false
}

func ptr[T any](v T) *T { return &v }

// addDeadLetters stores ds in order and returns them as the API shows them (ids 1, 2, …).
func addDeadLetters(t *testing.T, store *sqlite.Store, ds ...agate.DeadLetter) []apiDeadLetter {
	t.Helper()
	var want []apiDeadLetter
	for i, d := range ds {
		if err := store.AddDeadLetter(t.Context(), d); err != nil {
			t.Fatal(err)
		}
		a := apiDeadLetter{ID: int64(i + 1), Topic: d.Topic, Partition: d.Partition, Offset: d.Offset,
			Key: d.Key, Payload: d.Payload, Headers: d.Headers, Error: d.Error}
		if a.Key == nil {
			a.Key = []byte{}
		}
		if a.Headers == nil {
			a.Headers = map[string]string{}
		}
		want = append(want, a)
	}
	return want
}

func TestAdminListsDeadLettersWithTextWhenTheBytesAreUTF8(t *testing.T) {
	store, s := newAdminRig(t, agate.ScopeOperator)
	poison := []byte{0xff, 0xfe, '{', 0x00, 0x80}
	want := addDeadLetters(t, store,
		agate.DeadLetter{Topic: "prod.conversation.inbound", Partition: 2, Offset: 41, Key: []byte("6f1c0a"),
			Payload: []byte(`{"turn_id":`), Error: "poison: unexpected end of JSON input",
			Headers: map[string]string{"x-error": "poison: unexpected end of JSON input", "x-original-topic": "prod.conversation.inbound",
				"x-original-partition": "2", "x-original-offset": "41"}},
		agate.DeadLetter{Topic: "prod.conversation.outbound", Offset: 7, Payload: poison, Error: "not JSON"},
	)
	want[0].KeyText, want[0].PayloadText = ptr("6f1c0a"), ptr(`{"turn_id":`)
	want[1].KeyText = ptr("") // an empty key is valid UTF-8; the binary payload has no text

	got := listDeadLetters(t, s, "/v1/admin/dlq")
	if diff := cmp.Diff(apiDeadLetters{DeadLetters: want}, got); diff != "" {
		t.Errorf("GET /v1/admin/dlq (-want +got):\n%s", diff)
	}
	if !bytes.Equal(got.DeadLetters[1].Payload, poison) {
		t.Errorf("binary payload came back as %x, want %x", got.DeadLetters[1].Payload, poison)
	}

	_, body := get(t, s, "/v1/admin/dlq")
	if strings.Count(string(body), `"payload_text"`) != 1 {
		t.Errorf("want payload_text on the UTF-8 payload only: %s", body)
	}
}

func TestAdminFiltersDeadLettersByTopic(t *testing.T) {
	store, s := newAdminRig(t, agate.ScopeOperator)
	all := addDeadLetters(t, store,
		agate.DeadLetter{Topic: "conversation.inbound", Offset: 1, Payload: []byte("a")},
		agate.DeadLetter{Topic: "conversation.outbound", Offset: 1, Payload: []byte("b")},
		agate.DeadLetter{Topic: "conversation.inbound", Offset: 2, Payload: []byte("c")},
	)
	for i := range all {
		all[i].KeyText, all[i].PayloadText = ptr(""), ptr(string(all[i].Payload))
	}
	for _, tc := range []struct {
		topic string
		want  []apiDeadLetter
	}{
		{"conversation.inbound", []apiDeadLetter{all[0], all[2]}},
		{"conversation.outbound", []apiDeadLetter{all[1]}},
		{"conversation.inbound.dlq", []apiDeadLetter{}},
		{"", all},
	} {
		got := listDeadLetters(t, s, "/v1/admin/dlq?topic="+tc.topic)
		if diff := cmp.Diff(apiDeadLetters{DeadLetters: tc.want}, got); diff != "" {
			t.Errorf("topic %q (-want +got):\n%s", tc.topic, diff)
		}
	}
}

func TestAdminPagesThroughDeadLetters(t *testing.T) {
	store, s := newAdminRig(t, agate.ScopeOperator)
	for i := range 5 {
		topic := "conversation.inbound"
		if i == 1 {
			topic = "conversation.outbound"
		}
		if err := store.AddDeadLetter(t.Context(), agate.DeadLetter{Topic: topic, Offset: int64(i), Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	type page struct {
		IDs       []int64
		NextAfter *int64
	}
	for _, tc := range []struct {
		query string
		want  page
	}{
		{"limit=2", page{[]int64{1, 2}, ptr[int64](2)}},
		{"limit=2&after=2", page{[]int64{3, 4}, ptr[int64](4)}},
		{"limit=2&after=4", page{[]int64{5}, nil}},
		{"limit=5", page{[]int64{1, 2, 3, 4, 5}, ptr[int64](5)}},
		{"limit=5&after=5", page{[]int64{}, nil}}, // the empty page after a full last one
		{"after=0", page{[]int64{1, 2, 3, 4, 5}, nil}},
		{"topic=conversation.inbound&limit=2", page{[]int64{1, 3}, ptr[int64](3)}},
		{"topic=conversation.inbound&limit=2&after=3", page{[]int64{4, 5}, ptr[int64](5)}},
		{"after=9223372036854775807", page{[]int64{}, nil}},
	} {
		got := listDeadLetters(t, s, "/v1/admin/dlq?"+tc.query)
		ids := []int64{}
		for _, d := range got.DeadLetters {
			ids = append(ids, d.ID)
		}
		if diff := cmp.Diff(tc.want, page{ids, got.NextAfter}); diff != "" {
			t.Errorf("?%s (-want +got):\n%s", tc.query, diff)
		}
	}
}

// TestDeadLettersNeedTheOperatorScope: dead letters hold every tenant's records, so a
// tenant's admin scope is not enough.
func TestDeadLettersNeedTheOperatorScope(t *testing.T) {
	for _, scope := range []string{"chat", agate.ScopeAdmin} {
		store, s := newAdminRig(t, scope)
		addDeadLetters(t, store, agate.DeadLetter{Topic: "conversation.inbound", Payload: []byte("secret")})
		code, body := get(t, s, "/v1/admin/dlq")
		if code != http.StatusForbidden || !strings.Contains(string(body), `"code":"forbidden"`) || strings.Contains(string(body), "secret") {
			t.Errorf("with scope %q: %d %s, want 403 forbidden", scope, code, body)
		}
	}
}

func TestDeadLettersRefuseBadQueryParameters(t *testing.T) {
	_, s := newAdminRig(t, agate.ScopeOperator)
	for _, tc := range []struct {
		query string
		code  agate.Code
	}{
		{"limit=0", agate.EInvalidCursor},
		{"limit=501", agate.EInvalidCursor},
		{"limit=ten", agate.EInvalidCursor},
		{"limit=1.5", agate.EInvalidCursor},
		{"after=-1", agate.EInvalidCursor},
		{"after=x", agate.EInvalidCursor},
		{"after=9223372036854775808", agate.EInvalidCursor},
		{"topic=conversation%20inbound", agate.EInvalid},
		{"topic=" + strings.Repeat("t", 250), agate.EInvalid},
	} {
		code, body := get(t, s, "/v1/admin/dlq?"+tc.query)
		var e errorBody
		if err := json.Unmarshal(body, &e); err != nil || code != http.StatusBadRequest || e.Code != tc.code {
			t.Errorf("?%s = %d %s, want 400 %s", tc.query, code, body, tc.code)
		}
	}
}

func TestDeadLettersAre503WhenTheStoreIsDown(t *testing.T) {
	store, s := newAdminRig(t, agate.ScopeOperator)
	store.Close()
	code, body := get(t, s, "/v1/admin/dlq")
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil || code != http.StatusServiceUnavailable || e.Code != agate.EUnavailable {
		t.Errorf("with the store closed: %d %s, want 503 unavailable", code, body)
	}
}
