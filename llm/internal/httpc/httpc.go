// Package httpc builds the HTTP client that provider adapters call their APIs with.
package httpc

import (
	"errors"
	"net/http"
	"time"
)

// New returns a client like http.DefaultClient's, except that:
//   - the wait for response headers is bounded by idle: a provider that accepts the
//     connection and never answers fails as a timeout, so the router can move on instead
//     of holding the request for its whole deadline;
//   - it follows only the redirects that keep the request's method (307, 308): the others
//     would turn a POST into a GET without a body, so the redirect response is returned
//     for the adapter to explain.
func New(idle time.Duration) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = idle
	return &http.Client{CheckRedirect: keepMethod, Transport: t}
}

func keepMethod(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if req.Method != via[0].Method {
		return http.ErrUseLastResponse
	}
	return nil
}
