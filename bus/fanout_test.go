package bus_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/bus"
	"github.com/agate-gw/agate/inmem"
	"github.com/agate-gw/agate/kafka"
	"github.com/google/uuid"
)

type turns struct {
	cancelled, forgotten []uuid.UUID
}

func (f *turns) Cancel(id uuid.UUID) bool { f.cancelled = append(f.cancelled, id); return true }
func (f *turns) Forget(id uuid.UUID)      { f.forgotten = append(f.forgotten, id) }

func record(t *testing.T, ev agate.Event, origin string) kafka.Record {
	t.Helper()
	v, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return kafka.Record{Key: []byte(ev.SessionID.String()), Value: v, Headers: map[string]string{agate.HeaderOrigin: origin}}
}

// TestFanoutFeedsTheHub checks that another replica's events reach local subscribers, this
// replica's own are skipped (its hub had them first), control records act on the local
// turns, and undecodable records are poison.
func TestFanoutFeedsTheHub(t *testing.T) {
	hub := inmem.NewHub(0)
	tr := &turns{}
	f := bus.NewFanout(hub, tr, "me", quiet)
	session := uuid.New()
	sub := hub.Subscribe(session)
	defer sub.Close()
	ctx := context.Background()

	turn := uuid.NewString()
	started := agate.Event{EventID: uuid.New(), SessionID: session, Seq: 2, Type: agate.TypeStarted, Role: agate.RoleAssistant,
		Metadata: map[string]any{"turn_id": turn}}
	if err := f.Handle(ctx, record(t, started, "me")); err != nil {
		t.Fatal(err)
	}
	if err := f.Handle(ctx, record(t, started, "other")); err != nil {
		t.Fatal(err)
	}
	if got := len(sub.Events()); got != 1 {
		t.Fatalf("hub got %d events, want 1 (own record skipped)", got)
	}
	if ev := <-sub.Events(); ev.EventID != started.EventID {
		t.Errorf("hub got %+v", ev)
	}
	if running, ok := hub.Running(session); !ok || running != turn {
		t.Errorf("hub says turn %q runs (%v), want %s", running, ok, turn)
	}

	ctl := func(what string) kafka.Record {
		return kafka.Record{Key: []byte(session.String()), Headers: map[string]string{bus.HeaderControl: what, agate.HeaderOrigin: "other"}}
	}
	late := ctl(bus.ControlCancel)
	late.Headers[bus.HeaderTurn] = uuid.NewString() // a turn that has ended since
	if err := f.Handle(ctx, late); err != nil || len(tr.cancelled) != 0 {
		t.Errorf("cancel of another turn: err %v, cancelled %v; want nothing cancelled", err, tr.cancelled)
	}
	cancel := ctl(bus.ControlCancel)
	cancel.Headers[bus.HeaderTurn] = turn
	if err := f.Handle(ctx, cancel); err != nil || len(tr.cancelled) != 1 {
		t.Errorf("cancel: err %v, cancelled %v", err, tr.cancelled)
	}
	if err := f.Handle(ctx, ctl(bus.ControlDeleted)); err != nil || len(tr.forgotten) != 1 {
		t.Errorf("forget: err %v, forgotten %v", err, tr.forgotten)
	}
	if _, ok := <-sub.Events(); ok || !sub.Dropped() {
		t.Error("subscription not dropped when the session was deleted elsewhere")
	}

	for name, r := range map[string]kafka.Record{
		"not json":        {Value: []byte("{"), Headers: map[string]string{}},
		"no session":      record(t, agate.Event{Type: agate.TypeFinal}, "other"),
		"unknown control": ctl("reboot"),
		"bad key":         {Key: []byte("x"), Headers: map[string]string{bus.HeaderControl: bus.ControlCancel}},
	} {
		if err := f.Handle(ctx, r); !kafka.IsPoison(err) {
			t.Errorf("%s: err %v, want poison", name, err)
		}
	}
}
