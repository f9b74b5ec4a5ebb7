package tenant_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agate-gw/agate/tenant"
)

// logBuffer collects log lines; safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// watched loads src from a file of its own and runs the registry until the test ends. It
// returns the registry, the file's path and the log.
func watched(t *testing.T, src string) (*tenant.Registry, string, *logBuffer) {
	t.Helper()
	path := writeFile(t, t.TempDir(), "tenants.yaml", src)
	logs := &logBuffer{}
	r, err := tenant.Load(path, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil at ctx end", err)
		}
	})
	return r, path, logs
}

// budgetFile is a settings file giving acme a daily budget of n tokens.
func budgetFile(n int) string {
	return fmt.Sprintf("tenants:\n  acme:\n    budgets: {tokens_per_day: %d}\n", n)
}

// waitFor polls until f returns true, failing t after 10s. The reloads it waits for take
// about 100ms; the margin is for loaded machines, and the time taken is only logged.
func waitFor(t testing.TB, what string, f func() bool) {
	t.Helper()
	start := time.Now()
	for !f() {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("still not %s after 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%s after %v", what, time.Since(start).Round(time.Millisecond))
}

func budgetIs(r *tenant.Registry, n int64) func() bool {
	return func() bool { return r.Get("acme").TokensPerDay == n }
}

func TestRunReloadsAFileWrittenInPlace(t *testing.T) {
	r, path, _ := watched(t, budgetFile(100))
	writeFile(t, filepath.Dir(path), "tenants.yaml", budgetFile(200))
	waitFor(t, "reloaded", budgetIs(r, 200))
	writeFile(t, filepath.Dir(path), "tenants.yaml", budgetFile(300))
	waitFor(t, "reloaded again", budgetIs(r, 300))
}

func TestRunReloadsAFileReplacedByRename(t *testing.T) {
	r, path, _ := watched(t, budgetFile(100))
	// As editors and deployment tools save: write another file, rename it over.
	tmp := writeFile(t, filepath.Dir(path), ".tenants.yaml.swp", budgetFile(200))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reloaded", budgetIs(r, 200))
	// The watch survives the replacement.
	tmp = writeFile(t, filepath.Dir(path), ".tenants.yaml.swp", budgetFile(300))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reloaded after a second rename", budgetIs(r, 300))
}

func TestRunKeepsTheLastGoodSettingsWhenTheFileBreaks(t *testing.T) {
	r, path, logs := watched(t, budgetFile(100))
	dir := filepath.Dir(path)
	writeFile(t, dir, "tenants.yaml", budgetFile(-5))
	want := path + ":3:31: tenants.acme.budgets.tokens_per_day: want a whole number >= 0, got -5"
	waitFor(t, "logged", func() bool { return strings.Contains(logs.String(), want) })
	if got := r.Get("acme").TokensPerDay; got != 100 {
		t.Fatalf("with a broken file TokensPerDay = %d, want the last good 100", got)
	}
	if err := r.Reload(); err == nil || err.Error() != want {
		t.Errorf("Reload() = %v, want %s", err, want)
	}

	// Removed: still the last good settings.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "logged", func() bool { return strings.Contains(logs.String(), "no such file") })
	if got := r.Get("acme").TokensPerDay; got != 100 {
		t.Fatalf("with the file removed TokensPerDay = %d, want the last good 100", got)
	}

	writeFile(t, dir, "tenants.yaml", budgetFile(200))
	waitFor(t, "reloaded once the file is good again", budgetIs(r, 200))
	if n := strings.Count(logs.String(), "got -5"); n != 1 {
		t.Errorf("the broken file was logged %d times, want once:\n%s", n, logs)
	}
}

func TestGetIsSafeWhileTheFileIsReloaded(t *testing.T) {
	r, path, _ := watched(t, budgetFile(1))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if s := r.Get("acme"); s.TokensPerDay < 1 {
					t.Errorf("Get(acme).TokensPerDay = %d mid-reload", s.TokensPerDay)
					return
				}
			}
		})
	}
	for i := 2; i <= 20; i++ {
		writeFile(t, filepath.Dir(path), "tenants.yaml", budgetFile(i))
		if err := r.Reload(); err != nil { // alongside Run's own reloads
			t.Error(err)
		}
	}
	waitFor(t, "at the last value", budgetIs(r, 20))
	cancel()
	wg.Wait()
}

func TestRunOfAStaticRegistryEndsWithCtx(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := tenant.Static(tenant.Settings{}).Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
}
