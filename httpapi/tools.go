package httpapi

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/turn"
	"github.com/google/uuid"
)

// Tools is the tool catalogue behind authorization and policy (cmd/agate's toolGate).
type Tools interface {
	// Usable lists the tools p may use.
	Usable(ctx context.Context, p agate.Principal) []agate.Tool
	// Run validates, authorizes and runs one call for p; every outcome is a ToolOutcome.
	Run(ctx context.Context, p agate.Principal, call agate.ToolCall) turn.ToolOutcome
}

type toolsPage struct {
	Tools []agate.Tool `json:"tools"`
}

// handleListTools lists the tools the caller may use, with their argument schemas.
func (s *Server) handleListTools() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		page := toolsPage{Tools: []agate.Tool{}}
		if s.tools != nil {
			page.Tools = append(page.Tools, s.tools.Usable(r.Context(), principal(r))...)
		}
		writeJSON(w, http.StatusOK, page)
	})
}

type toolRequest struct {
	SessionID string          `json:"session_id"`
	Tool      string          `json:"tool"`
	Args      json.RawMessage `json:"args"`
}

type toolResponse struct {
	Status    string    `json:"status"`   // ok, error or blocked
	EventID   uuid.UUID `json:"event_id"` // of the stored tool.result event
	Seq       int64     `json:"seq"`
	Result    string    `json:"result"`
	Truncated bool      `json:"truncated,omitempty"`
}

// handleToolRequest runs a tool directly for a session the caller may change, with the
// checks a model's call gets, and stores the call and its result as tool.start and
// tool.result events of the session.
func (s *Server) handleToolRequest() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b toolRequest
		if err := s.readJSON(w, r, &b); err != nil {
			s.fail(w, r, err)
			return
		}
		id, err := parseSessionID(b.SessionID)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if b.Tool == "" {
			s.fail(w, r, agate.Errorf(agate.EInvalid, "tool is required."))
			return
		}
		if len(b.Args) == 0 {
			b.Args = json.RawMessage("{}")
		}
		p := principal(r)
		sess, err := s.store.Session(r.Context(), p.Tenant, id)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if err := s.permit(r, sess, relWriter); err != nil {
			s.fail(w, r, err)
			return
		}
		if s.tools == nil {
			s.fail(w, r, agate.Errorf(agate.EForbidden, "No tools are available on this gateway."))
			return
		}
		call := agate.ToolCall{ID: "req_" + uuid.NewString()[:8], Name: b.Tool, Arguments: string(b.Args)}
		meta := map[string]any{"tool": call.Name, "call_id": call.ID, "arguments": call.Arguments, "source": "tool.request"}
		ctx := context.WithoutCancel(r.Context()) // stored once begun, whatever the client does
		started, err := s.store.Append(ctx, nil, agate.Event{SessionID: id, Role: "tool", Type: agate.TypeToolStart, Metadata: meta})
		if err != nil {
			s.fail(w, r, err)
			return
		}
		s.hub.Publish(started[0])
		out := s.tools.Run(ctx, p, call) // its tool.start is stored: it runs to its end
		done, err := s.store.Append(ctx, nil, agate.Event{SessionID: id, Role: "tool", Type: agate.TypeToolResult, Message: out.Text,
			Metadata: map[string]any{"tool": call.Name, "call_id": call.ID, "status": out.Status, "truncated": out.Truncated, "source": "tool.request"}})
		if err != nil {
			s.fail(w, r, err)
			return
		}
		s.hub.Publish(done[0])
		writeJSON(w, http.StatusOK, toolResponse{Status: out.Status, EventID: done[0].EventID, Seq: done[0].Seq, Result: out.Text, Truncated: out.Truncated})
	})
}
