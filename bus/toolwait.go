package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/kafka"
	"github.com/google/uuid"
)

// Waiters matches executors' tool results (tool.results, tailed by every replica) with
// the calls waiting for them on this replica. A result nobody here waits for (the call
// runs elsewhere, or has timed out) is dropped; a repeated one (an executor redelivered
// the request) finds its waiter gone and is dropped too, so each call gets one result.
type Waiters struct {
	mu      sync.Mutex
	waiting map[uuid.UUID]chan agate.ToolResult
}

// NewWaiters returns an empty Waiters.
func NewWaiters() *Waiters {
	return &Waiters{waiting: make(map[uuid.UUID]chan agate.ToolResult)}
}

// Expect registers the call id before its request is sent; wait for the result with
// Wait, and call the returned cancel when done (also after Wait).
func (w *Waiters) Expect(id uuid.UUID) (wait func(ctx context.Context) (agate.ToolResult, error), cancel func()) {
	ch := make(chan agate.ToolResult, 1)
	w.mu.Lock()
	w.waiting[id] = ch
	w.mu.Unlock()
	cancel = func() {
		w.mu.Lock()
		delete(w.waiting, id)
		w.mu.Unlock()
	}
	wait = func(ctx context.Context) (agate.ToolResult, error) {
		select {
		case r := <-ch:
			return r, nil
		case <-ctx.Done():
			return agate.ToolResult{}, ctx.Err()
		}
	}
	return wait, cancel
}

// Handle is the handler of tool.results (a kafka.Tail): a record that is not a result is
// poison.
func (w *Waiters) Handle(_ context.Context, r kafka.Record) error {
	var res agate.ToolResult
	if err := json.Unmarshal(r.Value, &res); err != nil || res.RequestID == uuid.Nil {
		return kafka.Poison(fmt.Errorf("not a tool result: %v", err))
	}
	w.mu.Lock()
	ch, ok := w.waiting[res.RequestID]
	delete(w.waiting, res.RequestID)
	w.mu.Unlock()
	if ok {
		ch <- res // buffered, and only ever one send
	}
	return nil
}
