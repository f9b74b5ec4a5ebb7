// Package testsvc starts private PostgreSQL and Redis servers, in temporary directories on
// spare loopback ports, for tests that stop and restart them: an outage test must never
// disturb the shared servers the other tests use (AGATE_TEST_POSTGRES, AGATE_TEST_REDIS).
//
// It is for tests only: nothing but _test.go files may import it (a test of this package
// checks). A server binary that is missing skips the test, or fails it when CI=true, since
// CI must run every real-service test (scripts/services.sh installs the binaries).
package testsvc

import (
	"net"
	"os"
	"testing"
)

// missing skips t because of reason, or fails it in CI.
func missing(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI must run this test)", reason)
	}
	t.Skip(reason)
}

// sparePort returns a loopback TCP port that was free a moment ago.
func sparePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
