// Package watch reloads what files hold when they change: it watches directories and
// calls back once changes have settled.
package watch

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Dirs calls change at once (what is watched may have changed before the watch began),
// then after every burst of events in dir or in also, once none came for quiet, until ctx
// ends; then it returns nil. Any event counts, whatever the name: editors write temporary
// files and rename them, and a Kubernetes ConfigMap swaps a "..data" symlink, so change
// must tell for itself whether anything it reads changed. Dirs fails only when it cannot
// watch dir; a directory of also that cannot be watched is logged. Watch errors are logged.
func Dirs(ctx context.Context, dir string, also []string, quiet time.Duration, log *slog.Logger, change func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	for _, d := range also {
		if err := w.Add(d); err != nil {
			log.Warn("cannot watch a directory", "dir", d, "err", err)
		}
	}
	change()

	timer := time.NewTimer(quiet)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return nil
			}
			timer.Reset(quiet)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("watch error", "dir", dir, "err", err)
		case <-timer.C:
			change()
		}
	}
}
