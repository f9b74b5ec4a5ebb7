package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/agate-gw/agate"
)

// handleSSE streams a session's events as Server-Sent Events. Each frame carries
// `id: <seq>` (or `<seq>.<offset>` inside a streaming turn), `event: <type>` and the
// envelope as data. Last-Event-ID, or ?after=, resumes after that position.
func (s *Server) handleSSE() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sess, err := s.session(r, relViewer)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		from := r.Header.Get("Last-Event-ID")
		if from == "" {
			from = r.URL.Query().Get("after")
		}
		c, err := parseCursor(from)
		if err != nil {
			s.fail(w, r, err)
			return
		}

		sub := s.hub.Subscribe(sess.ID) // before the 200: a client that is connected misses nothing
		defer sub.Close()
		rc := http.NewResponseController(w)
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		s.metrics.SSEClients.Inc()
		defer s.metrics.SSEClients.Dec()

		var buf bytes.Buffer
		write := func(frame []byte) error {
			_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
			if _, err := w.Write(frame); err != nil {
				return err
			}
			return rc.Flush()
		}
		send := func(ev agate.Event, id string) error {
			buf.Reset()
			buf.WriteString("id: " + id + "\nevent: " + ev.Type + "\ndata: ")
			enc := json.NewEncoder(&buf) // Encode ends with "\n"; JSON has no raw newlines
			enc.SetEscapeHTML(false)
			if err := enc.Encode(ev); err != nil {
				return err
			}
			buf.WriteString("\n")
			return write(buf.Bytes())
		}
		if err := write([]byte("retry: 1000\n\n")); err != nil {
			return
		}
		beat := time.NewTicker(s.cfg.Heartbeat)
		defer beat.Stop()
		err = s.follow(r.Context(), sub, sess.ID, c, send, beat.C, func() error { return write([]byte(": keep-alive\n\n")) })
		switch {
		case errors.Is(err, errGone):
			s.log.Debug("sse stream ended: session deleted", "request_id", requestID(r.Context()), "session_id", sess.ID)
		case errors.Is(err, errLagged):
			s.log.Info("sse client fell behind; closing so it resumes", "request_id", requestID(r.Context()), "session_id", sess.ID)
		case err != nil && r.Context().Err() == nil:
			s.log.Debug("sse stream ended", "request_id", requestID(r.Context()), "session_id", sess.ID, "err", err)
		}
	})
}
