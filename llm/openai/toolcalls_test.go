package openai

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/agate-gw/agate"
	"github.com/google/go-cmp/cmp"
)

// source hands out the bytes of a fuzz input as small random numbers, then zeros.
type source struct{ b []byte }

func (s *source) intn(n int) int {
	if len(s.b) == 0 || n <= 1 {
		return 0
	}
	v := int(s.b[0]) % n
	s.b = s.b[1:]
	return v
}

// FuzzToolCallAssembly streams the pieces of 1 to 4 calls the ways servers do, split at
// random places and, where the pieces say which call they belong to, interleaved at
// random; the calls must come out whole, in the order they began, and the deltas must
// fold into them.
func FuzzToolCallAssembly(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{3, 3, 200, 17, 99, 5, 1, 0, 42, 42, 42, 7})
	f.Add([]byte{1, 2, 0, 0, 0, 0})
	f.Add([]byte{2, 3, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 255, 128})
	f.Fuzz(func(t *testing.T, data []byte) {
		src := &source{b: data}
		const (
			indexed         = iota // index on every piece, id on the first: interleaved
			idsEverywhere          // id on every piece, no index: interleaved
			firstIDOnly            // no index, id on the first piece: in a row
			allZero                // index 0 on every piece, id on the first: in a row
			freshIDs               // index on every piece, a new id on each: interleaved
			freshIDsNoIndex        // no index, a new id on every piece: in a row
			modes
		)
		mode := src.intn(modes)
		base := src.intn(3) // some servers number from 1
		n := 1 + src.intn(4)
		type call struct {
			want   agate.ToolCall
			pieces []toolCallPiece
		}
		calls := make([]call, n)
		for i := range calls {
			args := fmt.Sprintf(`{"n":%d,"s":"%x é\u00a0"}`, i, data[:min(len(data), i*3)])
			c := agate.ToolCall{ID: fmt.Sprintf("call_%d", i), Name: fmt.Sprintf("f%d", i), Arguments: args}
			calls[i].want = c
			// Cut args into pieces at random places between characters (a JSON
			// string on the wire cannot hold half of one).
			var cuts []string
			for rest := []rune(args); len(rest) > 0; {
				k := 1 + src.intn(len(rest))
				cuts = append(cuts, string(rest[:k]))
				rest = rest[k:]
			}
			cuts = append([]string{""}, cuts...) // OpenAI's first piece: id and name only
			for j, a := range cuts {
				raw, _ := json.Marshal(a)
				p := toolCallPiece{Function: functionPiece{Arguments: raw}}
				if j == 0 || mode == idsEverywhere {
					p.ID, p.Type, p.Function.Name = c.ID, "function", c.Name
				}
				if j > 0 && (mode == freshIDs || mode == freshIDsNoIndex) {
					p.ID = fmt.Sprintf("call_%d_%d", i, j)
				}
				switch mode {
				case indexed, freshIDs:
					idx := base + i
					p.Index = &idx
				case allZero:
					zero := 0
					p.Index = &zero
				}
				calls[i].pieces = append(calls[i].pieces, p)
			}
		}

		tc := newToolCalls()
		var deltas []agate.ToolCallDelta
		var order []int // calls in the order they began
		next := make([]int, n)
		send := func(i int) {
			if next[i] == 0 {
				order = append(order, i)
			}
			if d := tc.add(calls[i].pieces[next[i]]); d != nil {
				deltas = append(deltas, *d)
			}
			next[i]++
		}
		if mode == indexed || mode == idsEverywhere || mode == freshIDs {
			for {
				var open []int
				for i := range calls {
					if next[i] < len(calls[i].pieces) {
						open = append(open, i)
					}
				}
				if len(open) == 0 {
					break
				}
				send(open[src.intn(len(open))])
			}
		} else {
			for i := range calls {
				for next[i] < len(calls[i].pieces) {
					send(i)
				}
			}
		}

		var want []agate.ToolCall
		for _, i := range order {
			want = append(want, calls[i].want)
		}
		got := tc.result()
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("mode %d: calls (-want +got):\n%s", mode, diff)
		}
		folded := make([]agate.ToolCall, len(got))
		for _, d := range deltas {
			c := &folded[d.Index]
			if d.ID != "" {
				if c.ID != "" {
					t.Fatalf("id of call %d sent twice", d.Index)
				}
				c.ID = d.ID
			}
			if d.Name != "" {
				if c.Name != "" {
					t.Fatalf("name of call %d sent twice", d.Index)
				}
				c.Name = d.Name
			}
			c.Arguments += d.Arguments
		}
		if diff := cmp.Diff(got, folded); diff != "" {
			t.Fatalf("mode %d: deltas fold into (-calls +folded):\n%s", mode, diff)
		}
	})
}

func TestRetryAfterHeaders(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		header   map[string]string
		wantWait time.Duration
		wantHint string
	}{
		{nil, 0, ""},
		{map[string]string{"Retry-After": "0"}, 0, " Retry after 0 seconds."},
		{map[string]string{"Retry-After": "1"}, time.Second, " Retry after 1 second."},
		{map[string]string{"Retry-After": " 30 "}, 30 * time.Second, " Retry after 30 seconds."},
		{map[string]string{"Retry-After": "Sat, 01 Mar 2025 12:00:45 GMT"}, 45 * time.Second, " Retry after Sat, 01 Mar 2025 12:00:45 GMT."},
		{map[string]string{"Retry-After": "Sat, 01 Mar 2025 11:00:00 GMT"}, 0, " Retry after Sat, 01 Mar 2025 11:00:00 GMT."},
		{map[string]string{"Retry-After": "soon"}, 0, ""},
		{map[string]string{"Retry-After": "-5"}, 0, ""},
		{map[string]string{"Retry-After": "NaN"}, 0, ""},
		{map[string]string{"Retry-After": "1e300"}, 0, ""},
		{map[string]string{"retry-after-ms": "+Inf"}, 0, ""},
		{map[string]string{"retry-after-ms": "1234"}, 1234 * time.Millisecond, " Retry after 2 seconds."},
		{map[string]string{"retry-after-ms": "1234", "Retry-After": "2"}, 1234 * time.Millisecond, " Retry after 2 seconds."},
		{map[string]string{"retry-after-ms": "x", "Retry-After": "2"}, 2 * time.Second, " Retry after 2 seconds."},
	}
	for _, tt := range tests {
		h := http.Header{}
		for k, v := range tt.header {
			h.Set(k, v)
		}
		wait, hint := retryAfter(h, now)
		if wait != tt.wantWait || hint != tt.wantHint {
			t.Errorf("retryAfter(%v) = %v, %q; want %v, %q", tt.header, wait, hint, tt.wantWait, tt.wantHint)
		}
	}
}
