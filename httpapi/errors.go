package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/agate-gw/agate"
)

// status maps each error code to its HTTP status. It is the only place that does.
func status(code agate.Code) int {
	switch code {
	case agate.EInvalid, agate.EInvalidJSON, agate.EUnknownField, agate.EInvalidUTF8,
		agate.EEmptyMessage, agate.EInvalidSessionID, agate.EInvalidCursor:
		return http.StatusBadRequest
	case agate.EUnauthenticated:
		return http.StatusUnauthorized
	case agate.EForbidden, agate.EPolicyDenied:
		return http.StatusForbidden
	case agate.ENotFound, agate.ESessionNotFound:
		return http.StatusNotFound
	case agate.EMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case agate.EIdempotencyReuse:
		return http.StatusConflict
	case agate.EMessageTooLarge, agate.EBodyTooLarge:
		return http.StatusRequestEntityTooLarge
	case agate.EUnsupportedMedia:
		return http.StatusUnsupportedMediaType
	case agate.EUpgradeRequired:
		return http.StatusUpgradeRequired
	case agate.ERequestTimeout:
		return http.StatusRequestTimeout
	case agate.EClientGone:
		return 499 // nginx's "client closed request": nobody reads it, logs and metrics do
	case agate.EOverloaded, agate.EUpstreamRate, agate.ERateLimited, agate.EBudgetExceeded:
		return http.StatusTooManyRequests
	case agate.EUpstream, agate.EUpstreamAuth, agate.EStreamTruncated, agate.ELLMNotConfigured:
		return http.StatusBadGateway
	case agate.EUpstreamTimeout:
		return http.StatusGatewayTimeout
	case agate.EUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// retryAfter is the Retry-After, in seconds, sent with statuses that invite a retry.
const retryAfter = 1

// errorBody is what every error response carries.
type errorBody struct {
	Detail    string     `json:"detail"`
	Code      agate.Code `json:"code"`
	RequestID string     `json:"request_id"`
}

// fail answers with err's status and body. Errors without a code are logged (once, here)
// and answered with a generic 500: internal details never reach the client.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil && agate.ErrorCode(err) != agate.EClientGone {
		err = agate.Wrap(agate.EClientGone, err, "The client closed the request.")
	}
	s.logError(r, err)
	code := agate.ErrorCode(err)
	st := status(code)
	setRetryAfter(w, err, st)
	writeJSON(w, st, errorBody{Detail: agate.ErrorMessage(err), Code: code, RequestID: requestID(r.Context())})
}

// setRetryAfter sets Retry-After on statuses that invite a retry: the wait err asks
// for, rounded up to whole seconds, or a second.
func setRetryAfter(w http.ResponseWriter, err error, st int) {
	if d := agate.RetryAfter(err); d > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((d+time.Second-1)/time.Second)))
	} else if agate.ErrorCode(err) == agate.EBudgetExceeded {
		// A call larger than the whole budget: no retry will fit, so no Retry-After.
	} else if st == http.StatusTooManyRequests || st == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
	}
}

// logError logs err: server faults as errors, refused requests at debug level.
func (s *Server) logError(r *http.Request, err error) {
	if status(agate.ErrorCode(err)) >= 500 {
		s.log.ErrorContext(r.Context(), "request failed", "request_id", requestID(r.Context()), "err", err)
	} else {
		s.log.DebugContext(r.Context(), "request refused", "request_id", requestID(r.Context()), "err", err)
	}
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client went away; nothing to do
}
