package anthropic

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	errTimeout = errors.New("anthropic: request timeout exceeded")
	errIdle    = errors.New("anthropic: idle timeout exceeded")
)

// statusOverloaded is Anthropic's status for a temporarily overloaded API.
const statusOverloaded = 529

// fail maps an error of the HTTP exchange to what the caller returns.
func (x *call) fail(err error) error {
	if e := x.ctx.Err(); e != nil {
		return e
	}
	switch cause := context.Cause(x.reqCtx); {
	case errors.Is(cause, errIdle):
		return agate.Wrap(agate.EUpstreamTimeout, err, fmt.Sprintf(
			"Anthropic stopped sending its reply for over %s; try again.", x.c.idle))
	case errors.Is(cause, errTimeout):
		return agate.Wrap(agate.EUpstreamTimeout, err, fmt.Sprintf(
			"Anthropic did not finish its reply within %s; try again or ask for a shorter reply.", x.c.timeout))
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
			"Anthropic is unreachable: its host name does not resolve. Check the Anthropic base URL.")
	case errors.Is(err, syscall.ECONNREFUSED):
		return agate.Wrap(agate.EUpstream, err,
			"Anthropic is unreachable: the connection was refused. Check the Anthropic base URL.")
	case errors.As(err, &certErr):
		return agate.Wrap(agate.EUpstream, err,
			"Anthropic's TLS certificate was not accepted. Check the Anthropic base URL.")
	case errors.As(err, &netErr) && netErr.Timeout():
		return agate.Wrap(agate.EUpstreamTimeout, err, "Anthropic took too long to answer; try again.")
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return agate.Wrap(agate.EUpstream, err,
			"Anthropic is unreachable. Check the Anthropic base URL and the network.")
	}
	return agate.Wrap(agate.EUpstream, err, "The request to Anthropic failed; try again.")
}

// endOfStream maps the error that ended a response body (io.EOF included) to what Generate
// returns: nil if the reply was complete.
func (s *stream) endOfStream(err error) error {
	if e := s.ctx.Err(); e != nil {
		return e
	}
	if s.sawStop {
		return nil
	}
	var netErr net.Error
	if context.Cause(s.reqCtx) != nil || (errors.As(err, &netErr) && netErr.Timeout()) {
		return s.fail(err)
	}
	return agate.Wrap(agate.EStreamTruncated, err,
		"Anthropic's stream ended before the reply was complete; try again.")
}

// eventError maps an error event (or an error object sent with status 200).
func (s *stream) eventError(e apiError) error {
	msg := s.c.quote(e.Message)
	cause := fmt.Errorf("error event %q: %s", e.Type, msg)
	switch e.Type {
	case "overloaded_error":
		return agate.Wrap(agate.EUpstream, cause,
			quote.Sentence("Anthropic is overloaded and stopped the reply", msg)+" Try again shortly.")
	case "rate_limit_error":
		return agate.Wrap(agate.EUpstreamRate, cause, quote.Sentence("Anthropic is rate limiting the gateway", msg))
	case "authentication_error", "permission_error":
		return agate.Wrap(agate.EUpstreamAuth, cause,
			quote.Sentence("Anthropic refused the gateway's credentials", msg)+" Check the Anthropic API key.")
	case "timeout_error":
		return agate.Wrap(agate.EUpstreamTimeout, cause, quote.Sentence("Anthropic timed out", msg)+" Try again.")
	case "":
		return agate.Wrap(agate.EUpstream, cause, quote.Sentence("Anthropic reported an error", msg))
	}
	return agate.Wrap(agate.EUpstream, cause, quote.Sentence("Anthropic reported an error ("+s.c.quote(e.Type)+")", msg))
}

// statusError maps a response with a non-2xx status to an error, quoting the provider's
// message. A retry-after header, whatever the status, sets the error's RetryAfter.
func (c *Client) statusError(resp *http.Response, x *call) error {
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if readErr != nil && x.ctx.Err() != nil {
		return x.ctx.Err()
	}
	msg := c.quote(providerMessage(body, resp.Header.Get("Content-Type")))
	cause := fmt.Errorf("HTTP %s: %s", resp.Status, c.quote(string(body)))
	if id := resp.Header.Get("request-id"); id != "" {
		cause = fmt.Errorf("HTTP %s (request-id %s): %s", resp.Status, c.quote(id), c.quote(string(body)))
	}
	wait, waitHint := retryAfter(resp.Header, time.Now())
	e := &agate.Error{Code: agate.EUpstream, Err: cause, RetryAfter: wait}
	code := resp.StatusCode
	head := fmt.Sprintf("(HTTP %d)", code)
	switch {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		hint := " Check the Anthropic API key."
		if c.key == "" {
			hint = " No Anthropic API key is configured."
		}
		e.Code, e.Message = agate.EUpstreamAuth, quote.Sentence("Anthropic refused the gateway's credentials "+head, msg)+hint
	case code == http.StatusTooManyRequests:
		e.Code, e.Message = agate.EUpstreamRate, quote.Sentence("Anthropic is rate limiting the gateway "+head, msg)+waitHint
	case code == http.StatusRequestTimeout || code == http.StatusGatewayTimeout:
		e.Code, e.Message = agate.EUpstreamTimeout, quote.Sentence("Anthropic timed out "+head, msg)+" Try again."
	case code == http.StatusBadRequest && strings.Contains(strings.ToLower(msg), "credit balance"):
		// Billing, not the request: another provider may answer; the breaker counts it.
		e.Code, e.Message = agate.EUpstreamAuth, quote.Sentence("Anthropic's credit for the gateway is used up "+head, msg)
	case code == http.StatusBadRequest || code == http.StatusRequestEntityTooLarge || code == http.StatusUnprocessableEntity:
		// The request itself is refused: the caller's to fix, not a provider fault.
		e.Code, e.Message = agate.EInvalid, quote.Sentence("Anthropic refused the request "+head, msg)
	case code == statusOverloaded:
		e.Message = quote.Sentence("Anthropic is overloaded "+head, msg) + " Try again shortly." + waitHint
	case code >= 300 && code <= 399:
		e.Message = fmt.Sprintf("The Anthropic base URL redirects elsewhere (HTTP %d). Set it to the URL it redirects to.", code)
	case code == http.StatusNotFound:
		e.Message = quote.Sentence("Anthropic answered with an error "+head, msg) + " Check the Anthropic base URL and the model name."
	default:
		e.Message = quote.Sentence("Anthropic answered with an error "+head, msg) + waitHint
	}
	return e
}

// maxRetryAfter bounds a believable retry-after, in seconds (about 31 years); a longer one is
// ignored as garbage.
const maxRetryAfter = 1e9

// retryAfter reads a retry-after header (seconds or an HTTP date): the wait from now, and
// a sentence saying it; 0 and "" when there is none or it makes no sense. A date in the past
// is a wait of 0.
func retryAfter(h http.Header, now time.Time) (time.Duration, string) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if n, err := strconv.Atoi(v); err == nil && n >= 0 && n <= maxRetryAfter {
		if n == 1 {
			return time.Second, " Retry after 1 second."
		}
		return time.Duration(n) * time.Second, fmt.Sprintf(" Retry after %d seconds.", n)
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), " Retry after " + t.UTC().Format(http.TimeFormat) + "."
	}
	return 0, ""
}

// providerMessage extracts the error message from an error body: Anthropic's
// {"type":"error","error":{"type","message"}}, or a proxy's {"error":"…"} or
// {"message":"…"}; a text/plain body is the message.
func providerMessage(body []byte, contentType string) string {
	var v struct {
		Error   json.RawMessage `json:"error"`
		Message string          `json:"message"`
	}
	if err := json.Unmarshal(body, &v); err == nil {
		var s string
		if json.Unmarshal(v.Error, &s) == nil && s != "" {
			return s
		}
		var e apiError
		if json.Unmarshal(v.Error, &e) == nil && e.Message != "" {
			return e.Message
		}
		return v.Message
	}
	if mt, _, _ := mime.ParseMediaType(contentType); mt == "text/plain" {
		return string(body)
	}
	return ""
}

// quote makes provider text fit for an error message, the API key redacted.
func (c *Client) quote(s string) string { return quote.Clean(s, c.key) }
