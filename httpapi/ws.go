package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/inmem"
	"github.com/coder/websocket"
	"github.com/google/uuid"
)

// WebSocket close codes (DESIGN.md §3).
const (
	closeBadFrame        websocket.StatusCode = 4000
	closeUnauthenticated websocket.StatusCode = 4001
	closeForbidden       websocket.StatusCode = 4003
	closeUnknownSession  websocket.StatusCode = 4004
)

// clientFrame is anything a client may send. Type says which fields apply.
type clientFrame struct {
	Type string `json:"type"` // message, resume, cancel, ping
	messageBody
	After  *int64 `json:"after,omitempty"`  // resume: after this seq…
	Offset int    `json:"offset,omitempty"` // …and this many bytes of the text streamed after it
}

// serverFrame is a reply to a client frame that is not an event.
type serverFrame struct {
	Type      string     `json:"type"` // ack, pong, cancel, error
	SessionID uuid.UUID  `json:"session_id,omitzero"`
	EventID   uuid.UUID  `json:"event_id,omitzero"`
	Seq       int64      `json:"seq,omitempty"`
	Duplicate bool       `json:"duplicate,omitempty"`
	Cancelled *bool      `json:"cancelled,omitempty"`
	Code      agate.Code `json:"code,omitempty"`
	Detail    string     `json:"detail,omitempty"`
}

// handleWebSocket serves a session over a WebSocket: events out, exactly as SSE sends
// them; messages, resume, cancel and ping in. A malformed frame closes with 4000, an
// unknown session with 4004; an invalid message gets an error frame and the connection
// stays open.
func (s *Server) handleWebSocket() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := checkHandshake(r); err != nil {
			s.fail(w, r, err)
			return
		}
		c, err := parseCursor(r.URL.Query().Get("after"))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: bearerProtocol(r)})
		if err != nil {
			return // Accept has answered the client
		}
		s.conns.Add(1) // a hijacked connection: Shutdown does not wait for it, Wait does
		defer s.conns.Done()
		defer conn.CloseNow()
		conn.SetReadLimit(s.cfg.MaxBodyBytes)
		s.metrics.WSClients.Inc()
		defer s.metrics.WSClients.Dec()

		sess, err := s.session(r, relViewer)
		if err != nil {
			switch agate.ErrorCode(err) {
			case agate.ESessionNotFound, agate.EInvalidSessionID:
				conn.Close(closeUnknownSession, agate.ErrorMessage(err))
			case agate.EForbidden:
				conn.Close(closeForbidden, agate.ErrorMessage(err))
			case agate.EUnavailable:
				conn.Close(websocket.StatusTryAgainLater, agate.ErrorMessage(err))
			default:
				s.logError(r, err)
				conn.Close(websocket.StatusInternalError, agate.ErrorMessage(err))
			}
			return
		}
		ws := &wsConn{Server: s, ctx: r.Context(), conn: conn, sub: s.hub.Subscribe(sess.ID), session: sess.ID, sess: sess, resume: make(chan cursor, 1)}
		defer func() { ws.sub.Close() }()
		ws.serve(r, c)
	})
}

type wsConn struct {
	*Server
	ctx     context.Context // the request's: done when the client is gone
	once    sync.Once       // of end
	conn    *websocket.Conn
	sub     *inmem.Subscription // one for the connection, across resumes
	session uuid.UUID
	sess    agate.Session
	resume  chan cursor // latest resume request; the writer restarts from it
}

// write sends one frame. Writes run under the connection's own context, never a context
// that is cancelled to stop the writer: coder/websocket closes a connection whose write is
// cancelled midway.
func (ws *wsConn) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ws.ctx, ws.cfg.WriteTimeout)
	defer cancel()
	return ws.conn.Write(ctx, websocket.MessageText, b)
}

// serve reads client frames until the client leaves, sends a bad frame, or the writer
// ends the connection; meanwhile a goroutine writes the session's events.
func (ws *wsConn) serve(r *http.Request, c cursor) {
	wctx, stop := context.WithCancel(ws.ctx)
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		if err := ws.writeEvents(wctx, c); wctx.Err() == nil {
			ws.end(err) // unblocks the reader
		}
	}()
	err := ws.readFrames(r)
	stop()
	<-wdone
	ws.end(err)
}

// end closes the connection with the close code err calls for; only the first call counts.
func (ws *wsConn) end(err error) {
	ws.once.Do(func() {
		var ce closeError
		switch {
		case errors.As(err, &ce):
			ws.conn.Close(ce.code, ce.reason)
		case errors.Is(err, errLagged):
			ws.conn.Close(websocket.StatusTryAgainLater, "fell behind; reconnect and resume")
		case errors.Is(err, errGone):
			ws.conn.Close(closeUnknownSession, "session deleted")
		case errors.Is(err, errDraining):
			ws.conn.Close(websocket.StatusGoingAway, "gateway shutting down; reconnect and resume")
		default:
			ws.conn.Close(websocket.StatusNormalClosure, "")
		}
	})
}

// writeEvents follows the session from c, and again from wherever the client asks to resume.
func (ws *wsConn) writeEvents(ctx context.Context, c cursor) error {
	send := func(ev agate.Event, _ string) error { return ws.write(ev) }
	beat := time.NewTicker(ws.cfg.Heartbeat)
	defer beat.Stop()
	ping := func() error {
		pctx, cancel := context.WithTimeout(ws.ctx, ws.cfg.WriteTimeout)
		defer cancel()
		return ws.conn.Ping(pctx)
	}
	sub := ws.sub
	for {
		fctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- ws.follow(fctx, sub, ws.session, c, send, beat.C, ping) }()
		select {
		case c = <-ws.resume:
			stop()
			<-done
			// A fresh subscription: the old one may hold events from before the new cursor.
			sub.Close()
			sub = ws.hub.Subscribe(ws.session)
			ws.sub = sub
		case err := <-done:
			stop()
			if err == nil {
				err = ctx.Err()
			}
			return err
		}
	}
}

// checkHandshake refuses, with a JSON error, what websocket.Accept would refuse in plain
// text: a request that is not a version-13 WebSocket handshake, or one from a page on
// another host (the library's origin rule).
func checkHandshake(r *http.Request) error {
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		return agate.Errorf(agate.EUpgradeRequired, "This route speaks WebSocket; send an Upgrade request.")
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" || r.Header.Get("Sec-WebSocket-Key") == "" {
		return agate.Errorf(agate.EInvalid, "Send a WebSocket version 13 handshake with a Sec-WebSocket-Key.")
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		u, err := url.Parse(origin)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return agate.Errorf(agate.EForbidden, "WebSocket connections from origin %q are not allowed.", truncate(origin, 100))
		}
	}
	return nil
}

// headerHasToken reports whether a comma-separated header holds token, case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// closeError ends the connection with a close code.
type closeError struct {
	code   websocket.StatusCode
	reason string
}

func (e closeError) Error() string { return e.reason }

// badFrame ends the connection with 4000 and a reason cut to fit a close frame.
func badFrame(reason string) closeError {
	return closeError{closeBadFrame, truncate(reason, 120)} // a close reason holds 123 bytes
}

// readFrames handles client frames until the client goes or sends a malformed one.
func (ws *wsConn) readFrames(r *http.Request) error {
	for {
		typ, data, err := ws.conn.Read(ws.ctx)
		if err != nil {
			return err
		}
		if typ != websocket.MessageText {
			return badFrame("send JSON text frames")
		}
		var f clientFrame
		if err := decodeJSON(data, &f); err != nil {
			return badFrame(agate.ErrorMessage(err))
		}
		switch f.Type {
		case "ping":
			err = ws.write(serverFrame{Type: "pong"})
		case "cancel":
			if perr := ws.permit(r, ws.sess, relWriter); perr != nil {
				err = ws.write(serverFrame{Type: "error", Code: agate.ErrorCode(perr), Detail: agate.ErrorMessage(perr)})
				break
			}
			cancelled := ws.runner.Cancel(ws.session)
			err = ws.write(serverFrame{Type: "cancel", SessionID: ws.session, Cancelled: &cancelled})
		case "resume":
			if f.After == nil || *f.After < 0 || f.Offset < 0 {
				return badFrame("resume needs after: a seq >= 0 (and optionally offset >= 0)")
			}
			select {
			case <-ws.resume:
			default:
			}
			ws.resume <- cursor{seq: *f.After, offset: f.Offset}
		case "message":
			err = ws.message(r, f.messageBody)
		default:
			return badFrame("unknown frame type " + truncate(f.Type, 32))
		}
		if err != nil {
			return err
		}
	}
}

// message accepts a user message sent over the socket; it answers an ack or an error frame.
func (ws *wsConn) message(r *http.Request, b messageBody) error {
	if b.SessionID != "" && b.SessionID != ws.session.String() {
		return ws.write(serverFrame{Type: "error", Code: agate.EInvalidSessionID, Detail: "session_id must be this stream's session or be left out."})
	}
	b.SessionID = ws.session.String()
	// Each message is admitted like a request: the credential again (a key revoked or a
	// token expired since the handshake ends the connection), and the rate limits.
	p, err := ws.auth.Authenticate(r)
	switch agate.ErrorCode(err) {
	case "":
	case agate.EUnauthenticated:
		return closeError{closeUnauthenticated, truncate(agate.ErrorMessage(err), 120)}
	default:
		return ws.write(serverFrame{Type: "error", Code: agate.ErrorCode(err), Detail: agate.ErrorMessage(err)})
	}
	r = r.WithContext(agate.NewContext(r.Context(), p))
	if err := ws.rateCheck(r, p); err != nil {
		return ws.write(serverFrame{Type: "error", Code: agate.ErrorCode(err), Detail: agate.ErrorMessage(err)})
	}
	in, err := ws.inbound(p, b)
	if err == nil {
		if err = ws.permit(r, ws.sess, relWriter); err == nil {
			err = ws.decide(r, "conversation.send", map[string]any{"type": "session", "id": ws.session.String()}, map[string]any{"persona": in.PersonaID})
		}
	}
	if err == nil {
		var acc agate.Accepted
		if acc, err = ws.runner.Send(ws.ctx, in); err == nil {
			return ws.write(serverFrame{Type: "ack", SessionID: acc.Turn.SessionID, EventID: acc.Event.EventID, Seq: acc.Event.Seq, Duplicate: acc.Duplicate})
		}
	}
	ws.logError(r, err)
	return ws.write(serverFrame{Type: "error", Code: agate.ErrorCode(err), Detail: agate.ErrorMessage(err)})
}

// bearerProtocol returns the "bearer.<token>" subprotocol a browser offered to carry its
// credential (it cannot set headers on a WebSocket), so that the handshake echoes it, as
// browsers require of a subprotocol they offered.
func bearerProtocol(r *http.Request) []string {
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); strings.HasPrefix(p, "bearer.") {
				return []string{p}
			}
		}
	}
	return nil
}
