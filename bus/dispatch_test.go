package bus_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/bus"
	"github.com/agate-gw/agate/kafka"
	"github.com/google/uuid"
)

// deliveries records what Dispatch asks of the runner.
type deliveries struct {
	mu        sync.Mutex
	submitted map[uuid.UUID]func()
	withdrawn []uuid.UUID
}

func (d *deliveries) Submit(t agate.Turn, done func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.submitted[t.ID] = done
}

func (d *deliveries) Withdraw(id uuid.UUID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.withdrawn = append(d.withdrawn, id)
	return true
}

func (d *deliveries) withdrawals() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.withdrawn)
}

// TestDispatchWithdrawsTurnsWhosePartitionMoved checks the three ways a delivered turn
// leaves: it ends (the record is committed), its partition moves to another replica (the
// turn is withdrawn here), or the gateway stops (left to the runner's shutdown).
func TestDispatchWithdrawsTurnsWhosePartitionMoved(t *testing.T) {
	d := &deliveries{submitted: map[uuid.UUID]func(){}}
	var stopping bool
	handle := bus.Dispatch(d, func() bool { return stopping })
	record := func() (agate.Turn, kafka.Record) {
		turn := agate.Turn{ID: uuid.New(), SessionID: uuid.New(), Tenant: "t", Seq: 1}
		v, _ := json.Marshal(turn)
		return turn, kafka.Record{Value: v}
	}
	var committed []error
	done := func(err error) { committed = append(committed, err) }

	// Ends: committed once, not withdrawn when the partition goes later.
	ctx, cancel := context.WithCancel(context.Background())
	turn, r := record()
	handle(ctx, r, done)
	d.submitted[turn.ID]()
	cancel()
	if len(committed) != 1 || committed[0] != nil || d.withdrawals() != 0 {
		t.Fatalf("a turn that ended: committed %v, withdrawn %d", committed, d.withdrawals())
	}

	// Partition moved before the turn ended: withdrawn, not committed.
	ctx, cancel = context.WithCancel(context.Background())
	turn, r = record()
	handle(ctx, r, done)
	cancel()
	waitFor(t, "the withdrawal", 5*time.Second, func() bool { return d.withdrawals() == 1 })
	if d.withdrawn[0] != turn.ID || len(committed) != 1 {
		t.Errorf("moved: withdrawn %v, committed %v", d.withdrawn, committed)
	}

	// Stopping: left to the runner.
	stopping = true
	ctx, cancel = context.WithCancel(context.Background())
	_, r = record()
	handle(ctx, r, done)
	cancel()
	time.Sleep(50 * time.Millisecond) // room for a withdrawal, which must not come
	if d.withdrawals() != 1 {
		t.Errorf("withdrawn while stopping")
	}

	// Not a turn: poison.
	committed = nil
	handle(context.Background(), kafka.Record{Value: []byte(`{"turn_id":"x"}`)}, done)
	handle(context.Background(), kafka.Record{Value: []byte(`{}`)}, done)
	if len(committed) != 2 || !kafka.IsPoison(committed[0]) || !kafka.IsPoison(committed[1]) {
		t.Errorf("bad records: %v, want two poison errors", committed)
	}
}
