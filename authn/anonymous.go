// Package authn authenticates requests. Until credentials are configured every caller is
// the anonymous principal of one tenant (the dev default, GATEWAY_REQUIRE_AUTH=false).
package authn

import (
	"net/http"

	"github.com/agate-gw/agate"
)

// Anonymous authenticates every request as the subject "anonymous" of Tenant, with
// Scopes (the dev profile grants "admin"; prod none).
type Anonymous struct {
	Tenant string
	Scopes []string
}

// Authenticate never fails.
func (a Anonymous) Authenticate(*http.Request) (agate.Principal, error) {
	return agate.Principal{Tenant: a.Tenant, Subject: "anonymous", Scopes: a.Scopes}, nil
}
