package openai

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/llm/internal/quote"
)

// Causes of the request context's cancellation.
var (
	errTimeout = errors.New("openai: request timeout exceeded")
	errIdle    = errors.New("openai: idle timeout exceeded")
)

// cancelled returns what Generate returns when the caller's context is done or the
// request's Timeout or IdleTimeout fired, and nil otherwise.
func (s *stream) cancelled(err error) error {
	if e := s.ctx.Err(); e != nil {
		return e
	}
	switch cause := context.Cause(s.reqCtx); {
	case errors.Is(cause, errIdle):
		return agate.Wrap(agate.EUpstreamTimeout, err, fmt.Sprintf(
			"The LLM provider stopped sending its reply for over %s; try again.", s.c.idle))
	case errors.Is(cause, errTimeout):
		return agate.Wrap(agate.EUpstreamTimeout, err, fmt.Sprintf(
			"The LLM provider did not finish its reply within %s; try again or ask for a shorter reply.", s.c.timeout))
	}
	return nil
}

// failBeforeResponse maps an error of the HTTP exchange before any response arrived to
// what Generate returns. Nothing was received, so these are agate.EUpstream (or
// agate.EUpstreamTimeout) and never agate.EStreamTruncated: a retry cannot duplicate text.
func (s *stream) failBeforeResponse(err error) error {
	if e := s.cancelled(err); e != nil {
		return e
	}
	var (
		netErr  net.Error
		dnsErr  *net.DNSError
		opErr   *net.OpError
		certErr *tls.CertificateVerificationError
	)
	switch {
	case errors.As(err, &dnsErr):
		return agate.Wrap(agate.EUpstream, err,
			"The LLM provider is unreachable: its host name does not resolve. Check LLM_BASE_URL.")
	case errors.Is(err, syscall.ECONNREFUSED):
		return agate.Wrap(agate.EUpstream, err,
			"The LLM provider is unreachable: the connection was refused. Check LLM_BASE_URL and that the provider is running.")
	case errors.As(err, &certErr):
		return agate.Wrap(agate.EUpstream, err,
			"The LLM provider's TLS certificate was not accepted. Check LLM_BASE_URL.")
	case errors.As(err, &netErr) && netErr.Timeout():
		return agate.Wrap(agate.EUpstreamTimeout, err, "The LLM provider took too long to answer; try again.")
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return agate.Wrap(agate.EUpstream, err,
			"The LLM provider is unreachable. Check LLM_BASE_URL and the network.")
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return agate.Wrap(agate.EUpstream, err,
			"The LLM provider could not be reached: it closed the connection before answering. Try again.")
	}
	return agate.Wrap(agate.EUpstream, err,
		"The LLM provider could not be reached: the connection failed before it answered. Try again.")
}

// endOfStream maps the error that ended a response body (io.EOF included) to what Generate
// returns: nil if the reply was complete. A connection that fails once the response has
// begun is agate.EStreamTruncated, unless a timeout explains it.
func (s *stream) endOfStream(err error) error {
	if e := s.ctx.Err(); e != nil {
		return e
	}
	if s.sawFinish {
		return nil
	}
	if e := s.cancelled(err); e != nil {
		return e
	}
	if netErr := net.Error(nil); errors.As(err, &netErr) && netErr.Timeout() {
		return agate.Wrap(agate.EUpstreamTimeout, err, "The LLM provider took too long to answer; try again.")
	}
	return agate.Wrap(agate.EStreamTruncated, err,
		"The LLM provider's stream ended before the reply was complete; try again.")
}

// streamError is an error object that arrived with status 200.
func (s *stream) streamError(msg string) error {
	return agate.Errorf(agate.EUpstream, "%s", quote.Sentence("The LLM provider reported an error", s.c.quote(msg)))
}

// statusError maps a response with a non-2xx status to an error, quoting the provider's
// message.
func (c *Client) statusError(resp *http.Response, s *stream) error {
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if readErr != nil && s.ctx.Err() != nil {
		return s.ctx.Err()
	}
	msg := c.quote(providerMessage(body, resp.Header.Get("Content-Type")))
	cause := fmt.Errorf("HTTP %s: %s", resp.Status, c.quote(string(body)))
	code := resp.StatusCode
	head := fmt.Sprintf("(HTTP %d)", code)
	switch code {
	case http.StatusUnauthorized, http.StatusForbidden:
		hint := " Check LLM_API_KEY."
		if c.key == "" {
			hint = " No API key is configured; set LLM_API_KEY."
		}
		return agate.Wrap(agate.EUpstreamAuth, cause,
			quote.Sentence("The LLM provider refused the gateway's credentials "+head, msg)+hint)
	case http.StatusTooManyRequests:
		if bytes.Contains(body, []byte(`"insufficient_quota"`)) {
			// Billing, not load: waiting does not help. Like a refused key, it sends the
			// router to the next provider and counts against the breaker.
			return agate.Wrap(agate.EUpstreamAuth, cause,
				quote.Sentence("The LLM provider's quota for the gateway is used up "+head, msg))
		}
		wait, hint := retryAfter(resp.Header, time.Now())
		return &agate.Error{Code: agate.EUpstreamRate, Err: cause, RetryAfter: wait,
			Message: quote.Sentence("The LLM provider is rate limiting the gateway "+head, msg) + hint}
	case http.StatusRequestTimeout, http.StatusGatewayTimeout:
		return agate.Wrap(agate.EUpstreamTimeout, cause,
			quote.Sentence("The LLM provider timed out "+head, msg)+" Try again.")
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity:
		// The request itself is refused (too long a context, a bad parameter): retrying or
		// another provider's breaker would not help, and it is the caller's to fix.
		return agate.Wrap(agate.EInvalid, cause, quote.Sentence("The LLM provider refused the request "+head, msg))
	}
	if code >= 300 && code <= 399 {
		return agate.Wrap(agate.EUpstream, cause, fmt.Sprintf(
			"The LLM base URL redirects elsewhere (HTTP %d). Set LLM_BASE_URL to the URL it redirects to.", code))
	}
	wait, hint := retryAfter(resp.Header, time.Now())
	if code != http.StatusServiceUnavailable {
		wait = 0
	}
	if code == http.StatusNotFound {
		hint += " Check LLM_BASE_URL (it usually ends in /v1) and LLM_MODEL."
	}
	return &agate.Error{Code: agate.EUpstream, Err: cause, RetryAfter: wait,
		Message: quote.Sentence("The LLM provider answered with an error "+head, msg) + hint}
}

// retryAfter returns the wait that a response's headers ask for at time now, and a
// sentence saying so; 0 and "" when they do not say. It reads "retry-after-ms" (OpenAI,
// milliseconds) and "Retry-After" (seconds, possibly fractional, or an HTTP date); the
// first is more precise and wins for the wait, the second is quoted in the sentence as the
// provider wrote it. A date in the past is a wait of 0; values that are not numbers or
// dates, negative, or over maxRetryAfter are ignored.
func retryAfter(h http.Header, now time.Time) (time.Duration, string) {
	var (
		wait time.Duration
		hint string
	)
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if f, err := strconv.ParseFloat(v, 64); err == nil && f >= 0 && f < maxRetryAfter {
			wait = seconds(f)
			if f == 1 {
				hint = " Retry after 1 second."
			} else {
				hint = " Retry after " + strconv.FormatFloat(f, 'f', -1, 64) + " seconds."
			}
		} else if t, err := http.ParseTime(v); err == nil {
			wait = max(t.Sub(now), 0)
			hint = " Retry after " + t.UTC().Format(http.TimeFormat) + "."
		}
	}
	if v := strings.TrimSpace(h.Get("Retry-After-Ms")); v != "" {
		if ms, err := strconv.ParseFloat(v, 64); err == nil && ms >= 0 && ms < maxRetryAfter*1000 {
			wait = seconds(ms / 1000)
			if hint == "" {
				s := math.Ceil(ms / 1000)
				hint = " Retry after " + strconv.FormatFloat(s, 'f', -1, 64) + " seconds."
				if s == 1 {
					hint = " Retry after 1 second."
				}
			}
		}
	}
	return wait, hint
}

// maxRetryAfter bounds a believable wait, in seconds (about 31 years); a longer one is
// ignored as garbage.
const maxRetryAfter = 1e9

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// providerMessage extracts the error message from an error body: {"error":{"message"}},
// {"error":"…"}, {"message":"…"} or {"detail":"…"}; a text/plain body is the message.
func providerMessage(body []byte, contentType string) string {
	var v struct {
		Error   json.RawMessage `json:"error"`
		Message json.RawMessage `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	}
	if err := json.Unmarshal(body, &v); err == nil {
		for _, raw := range []json.RawMessage{v.Error, v.Message, v.Detail} {
			if m := errorMessage(raw); m != "" {
				return m
			}
		}
		return ""
	}
	if mt, _, _ := mime.ParseMediaType(contentType); mt == "text/plain" {
		return string(body)
	}
	return ""
}

// errorMessage returns the message of an error value that is a string or an object with
// a string "message".
func errorMessage(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var obj struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &obj) == nil {
		return obj.Message
	}
	return ""
}

// quote makes provider text fit for an error message, the API key redacted.
func (c *Client) quote(s string) string { return quote.Clean(s, c.key) }
