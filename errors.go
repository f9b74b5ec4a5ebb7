package agate

import (
	"errors"
	"fmt"
	"time"
)

// Code is a machine-readable error code, sent to clients as "code". httpapi maps each to an
// HTTP status in one place.
type Code string

// Error codes. Keep them snake_case and stable: clients match on them.
const (
	EInvalid          Code = "invalid_request"        // the request is malformed in a way no finer code names
	EInvalidJSON      Code = "invalid_json"           // the body is not valid JSON
	EUnknownField     Code = "unknown_field"          // the body has a field the API does not know
	EInvalidUTF8      Code = "invalid_utf8"           // text is not valid UTF-8
	EEmptyMessage     Code = "empty_message"          // the message is empty or only whitespace
	EMessageTooLarge  Code = "message_too_large"      // the message is over the configured limit
	EBodyTooLarge     Code = "body_too_large"         // the request body is over the limit
	EUnsupportedMedia Code = "unsupported_media_type" // the body is not application/json
	EInvalidSessionID Code = "invalid_session_id"     // a session id that is not a UUID
	EInvalidCursor    Code = "invalid_cursor"         // a paging parameter that cannot be parsed
	EUnauthenticated  Code = "unauthenticated"        // no or bad credentials
	EForbidden        Code = "forbidden"              // the principal may not do this
	ENotFound         Code = "not_found"              // no such route or resource
	ESessionNotFound  Code = "session_not_found"      // no such session for this tenant
	EMethodNotAllowed Code = "method_not_allowed"     // the route exists, the method does not
	EUpgradeRequired  Code = "upgrade_required"       // a WebSocket route called without the upgrade
	EIdempotencyReuse Code = "idempotency_key_reused" // the key was used for a different request
	ERequestTimeout   Code = "request_timeout"        // the request body arrived too slowly
	EClientGone       Code = "client_closed_request"  // the client left before the answer
	ERateLimited      Code = "rate_limited"           // the caller's request rate is over its limit; retry later
	EOverloaded       Code = "overloaded"             // too much queued work; retry later
	EUnavailable      Code = "unavailable"            // a dependency is down; retry later
	EInternal         Code = "internal_error"         // a bug; details are in the logs

	// Codes of failed turns, carried in a terminal event's metadata.code.
	ELLMNotConfigured Code = "llm_not_configured"    // no model provider is configured
	EUpstream         Code = "upstream_error"        // the provider answered with an error
	EUpstreamTimeout  Code = "upstream_timeout"      // the provider took too long
	EUpstreamAuth     Code = "upstream_auth_failed"  // the provider refused the gateway's credentials
	EUpstreamRate     Code = "upstream_rate_limited" // the provider is rate limiting
	EStreamTruncated  Code = "stream_truncated"      // the provider's stream ended before its end marker
	ECancelled        Code = "cancelled"             // the client cancelled the turn
	EBudgetExceeded   Code = "budget_exceeded"       // the tenant's token budget for the day is spent
	EPolicyDenied     Code = "policy_denied"         // a policy (OPA) refused the action
)

// Error is an error with a code and a message safe to show to a client.
type Error struct {
	Code       Code
	Message    string
	Err        error         // the cause, for logs; never sent to clients
	RetryAfter time.Duration // when > 0: the earliest a retry may succeed (from a provider's Retry-After)
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an error with code and a client-safe message.
func Errorf(code Code, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an error with code and message whose cause is err.
func Wrap(code Code, err error, message string) error {
	return &Error{Code: code, Message: message, Err: err}
}

// ErrorCode returns the code of the first *Error in err's chain, EInternal for any other
// non-nil error, and "" for nil.
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EInternal
}

// RetryAfter returns the wait that the first *Error in err's chain asks for, or 0.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// ErrorMessage returns the client-safe message of err; a generic sentence when err has no code.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "An internal error occurred."
}
