package authn

import (
	"net/http"

	"github.com/agate-gw/agate"
)

// Anonymous authenticates every request as the subject "anonymous" of Tenant, with
// Scopes (the dev profile grants "admin"; prod none). It ignores credentials: use it only
// where nothing is to be verified (tests, benchmarks); the gateway uses Authenticator,
// which is anonymous too when Config.RequireAuth is false but still verifies credentials
// that are sent.
type Anonymous struct {
	Tenant string
	Scopes []string
}

// Authenticate never fails.
func (a Anonymous) Authenticate(*http.Request) (agate.Principal, error) {
	return agate.Principal{Tenant: a.Tenant, Subject: "anonymous", Scopes: a.Scopes, Via: agate.ViaAnonymous}, nil
}
