package redis_test

import (
	"context"
	"crypto/rand"
	"os"
	"testing"
	"time"

	"github.com/agate-gw/agate/internal/testsvc"
	"github.com/agate-gw/agate/redis"
	goredis "github.com/redis/go-redis/v9"
)

// The tests in this package run against a real Redis named by AGATE_TEST_REDIS; the
// outage tests also start private redis-server processes on spare loopback ports, so that
// stopping them never disturbs the shared server.

const envRedis = "AGATE_TEST_REDIS"

// skipUnless skips t, or fails it in CI, with the reason.
func skipUnless(t testing.TB, ok bool, reason string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI must run this test)", reason)
	}
	t.Skip(reason)
}

// redisURL returns the shared test server's URL.
func redisURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(envRedis)
	skipUnless(t, u != "", "set "+envRedis+" (e.g. redis://127.0.0.1:6379/0) to run the Redis tests")
	return u
}

// newClient returns a client for url, closed when the test ends.
func newClient(t testing.TB, url string) *goredis.Client {
	t.Helper()
	c, err := redis.NewClient(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sharedClient returns a client of the shared test server, checked with PING.
func sharedClient(t testing.TB) *goredis.Client {
	t.Helper()
	c := newClient(t, redisURL(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("%s=%s: %v", envRedis, redisURL(t), err)
	}
	return c
}

// testPrefix returns a key prefix of the test's own, and deletes its keys when the test
// ends.
func testPrefix(t testing.TB, c *goredis.Client) string {
	t.Helper()
	prefix := "agatetest:" + rand.Text()[:12] + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return prefix
}

// startServer starts a private redis-server for t (see testsvc.StartRedis), which a test
// may stop without disturbing the shared server.
func startServer(t testing.TB) *testsvc.Redis {
	t.Helper()
	redisURL(t) // the private servers are part of the Redis tests
	return testsvc.StartRedis(t)
}

// eventually calls f until it returns true, failing t after 10s. It never asserts on
// how long that took.
func eventually(t testing.TB, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
