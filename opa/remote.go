package opa

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/agate-gw/agate"
)

// maxResponse bounds how much of an OPA server's answer Remote reads.
const maxResponse = 1 << 20

// Remote asks an OPA server for decisions through its REST data API:
// POST {url}/v1/data/agate/decision with {"input": in}, answered by {"result": decision}
// (no "result" when the decision is undefined).
type Remote struct {
	endpoint string
	client   *http.Client
}

var _ Decider = (*Remote)(nil)

// NewRemote returns a Remote for the OPA server at base (scheme, host and optionally a path
// prefix, such as "http://opa:8181"). client's Timeout bounds each decision; a nil client
// is one with a 2 s timeout. NewRemote returns an error for a base that is not an absolute
// http or https URL.
func NewRemote(base string, client *http.Client) (*Remote, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("opa: server url: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("opa: server url %q: want http(s)://host[:port][/prefix]", base)
	}
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Second}
	}
	return &Remote{endpoint: strings.TrimRight(u.String(), "/") + "/v1/data/agate/decision", client: client}, nil
}

// Decide asks the server for data.agate.decision with in as input. It keeps the Decider
// contract: a nil error and the policy's answer, or an error and a denial. Errors are
// agate.EUnavailable when the server cannot be reached, times out, answers 5xx or breaks
// off its answer; agate.EInternal when it answers 4xx (a request or a server
// configuration the gateway and the server disagree on), an undefined decision (the agate
// package is not loaded) or one without a boolean allow; they wrap ctx.Err() when ctx
// ends first.
func (r *Remote) Decide(ctx context.Context, in agate.PolicyInput) (agate.PolicyDecision, error) {
	body, err := json.Marshal(struct {
		Input agate.PolicyInput `json:"input"`
	}{in})
	if err != nil {
		return agate.PolicyDecision{}, agate.Wrap(agate.EInternal, fmt.Errorf("opa: input: %w", err),
			"The policy input cannot be built.")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.endpoint, bytes.NewReader(body))
	if err != nil {
		return agate.PolicyDecision{}, agate.Wrap(agate.EInternal, fmt.Errorf("opa: %w", err),
			"The policy server cannot be asked.")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return agate.PolicyDecision{}, r.unavailable(ctx, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return agate.PolicyDecision{}, r.unavailable(ctx, err)
	}
	if resp.StatusCode != http.StatusOK {
		err := fmt.Errorf("opa: POST %s: %s: %s", r.endpoint, resp.Status, serverMessage(raw))
		if resp.StatusCode >= 500 {
			return agate.PolicyDecision{}, agate.Wrap(agate.EUnavailable, err, "The policy server is unavailable.")
		}
		return agate.PolicyDecision{}, agate.Wrap(agate.EInternal, err, "The policy server refused the request.")
	}
	var answer struct {
		Result any `json:"result"`
	}
	if err := json.Unmarshal(raw, &answer); err != nil {
		return agate.PolicyDecision{}, malformed(fmt.Errorf("opa: POST %s: %w", r.endpoint, err))
	}
	if answer.Result == nil {
		return agate.PolicyDecision{}, undefined()
	}
	return decision(answer.Result)
}

// unavailable classifies a failed exchange: the caller's context ending is passed on as
// such; anything else, the client's own timeout included, is the server being unavailable.
func (r *Remote) unavailable(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		if !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return fmt.Errorf("opa: POST %s: %w", r.endpoint, err)
	}
	return agate.Wrap(agate.EUnavailable, fmt.Errorf("opa: POST %s: %w", r.endpoint, err),
		"The policy server is unavailable.")
}

// serverMessage is the message of an OPA error body ({"code": …, "message": …}), or the
// start of whatever else the body is.
func serverMessage(raw []byte) string {
	var e struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Message != "" {
		return e.Code + ": " + e.Message
	}
	const max = 200
	if len(raw) > max {
		raw = raw[:max]
	}
	return strings.TrimSpace(string(raw))
}
