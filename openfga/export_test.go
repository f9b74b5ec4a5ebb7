package openfga

import "time"

// SetClock makes c read the time from now.
func SetClock(c *Cached, now func() time.Time) { c.now = now }

// MaxRemembered is how many allows a Cached remembers at most.
const MaxRemembered = maxRemembered

// Remembered returns how many allows c remembers.
func Remembered(c *Cached) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.allows)
}

// DropCheckCache makes e's check cache forget every answer, as a write does.
func DropCheckCache(e *Engine) { e.cache.invalidate() }
