package router

import (
	"context"
	"time"
)

// SetSleep replaces the wait before a retry.
func SetSleep(r *Router, f func(ctx context.Context, d time.Duration) error) { r.sleep = f }
