package tenant

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/agate-gw/agate/internal/watch"
)

// debounce is how long Run waits after the last change in the file's directory before
// reading the file: editors and deployment tools write in several steps.
const debounce = 100 * time.Millisecond

// Reload reads the file again and, if it loads, serves its settings from now on. If it
// does not, the settings stay as they were and the error says why, as Load's do. A file
// whose content has not changed is not parsed again. A Static registry has nothing to
// reload.
func (r *Registry) Reload() error {
	_, err := r.reload()
	return err
}

// reload is Reload, also reporting whether the settings changed.
func (r *Registry) reload() (bool, error) {
	if r.path == "" {
		return false, nil
	}
	r.reloading.Lock()
	defer r.reloading.Unlock()
	src, err := os.ReadFile(r.path)
	if err != nil {
		return false, fmt.Errorf("tenant settings: %w", err)
	}
	if sha256.Sum256(src) == r.current.Load().sum {
		return false, nil
	}
	s, err := parse(r.path, src)
	if err != nil {
		return false, err
	}
	r.current.Store(s)
	return true, nil
}

// Run keeps the settings up to date with the file until ctx ends, then returns nil. It
// watches the file's directory (not the file, so that it survives editors and tools that
// replace the file by renaming another over it, and Kubernetes' ConfigMap symlink swaps),
// and reloads the file once the directory has been quiet for 100ms. A file that no longer
// loads (or is gone) is logged once with the precise error, and the last good settings
// stay in force. Run returns an error only when it cannot watch the directory. A Static
// registry's Run just waits for ctx to end. Call Run once.
func (r *Registry) Run(ctx context.Context) error {
	if r.path == "" {
		<-ctx.Done()
		return nil
	}
	dir := filepath.Dir(r.path)
	var also []string
	// A file that is a symlink to another directory changes there.
	if target, err := filepath.EvalSymlinks(r.path); err == nil && filepath.Dir(target) != dir {
		also = append(also, filepath.Dir(target))
	}

	var lastErr string // the failure last logged, not to log it at every event
	reload := func() {
		changed, err := r.reload()
		switch {
		case err != nil && err.Error() != lastErr:
			lastErr = err.Error()
			r.log.Error("tenant settings not reloaded; the last good settings stay in force", "path", r.path, "err", err)
		case err == nil && lastErr != "":
			lastErr = ""
			if !changed {
				r.log.Info("tenant settings file is good again, and unchanged", "path", r.path)
			}
		}
		if changed {
			r.log.Info("tenant settings reloaded", "path", r.path, "tenants", len(r.current.Load().tenants))
		}
	}
	if err := watch.Dirs(ctx, dir, also, debounce, r.log, reload); err != nil {
		return fmt.Errorf("tenant settings: %w", err)
	}
	return nil
}
