package anthropic

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"
)

// decodeAll returns every event of r and the error that ended the stream.
func decodeAll(r io.Reader, max int) ([]sseEvent, error) {
	d := newSSEDecoder(r, max)
	var evs []sseEvent
	for {
		ev, err := d.Next()
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev)
	}
}

// splitReader returns its pieces one per Read.
type splitReader struct{ pieces []string }

func (r *splitReader) Read(p []byte) (int, error) {
	for len(r.pieces) > 0 && r.pieces[0] == "" {
		r.pieces = r.pieces[1:]
	}
	if len(r.pieces) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.pieces[0])
	r.pieces[0] = r.pieces[0][n:]
	return n, nil
}

func TestSSEDecoder(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []sseEvent
	}{
		{"event and data", "event: ping\ndata: {\"type\": \"ping\"}\n\n", []sseEvent{{"ping", `{"type": "ping"}`}}},
		{"data with and without a space", "data: a\n\ndata:b\n\ndata:  c\n\n",
			[]sseEvent{{"message", "a"}, {"message", "b"}, {"message", " c"}}},
		{"multi-line data", "data: {\"a\":\ndata: 1}\n\n", []sseEvent{{"message", "{\"a\":\n1}"}}},
		{"CRLF", "event: e\r\ndata: a\r\ndata: b\r\n\r\n", []sseEvent{{"e", "a\nb"}}},
		{"CR", "data: a\rdata: b\r\r", []sseEvent{{"message", "a\nb"}}},
		{"the event type does not carry over", "event: e\ndata: a\n\ndata: b\n\n", []sseEvent{{"e", "a"}, {"message", "b"}}},
		{"comments", ": hi\ndata: a\n: mid\n\n:\n\n", []sseEvent{{"message", "a"}}},
		{"no data, no event", "event: x\n\nid: 1\nretry: 10\n\ndata: z\n\n", []sseEvent{{"message", "z"}}},
		{"byte order mark", "\xEF\xBB\xBFevent: e\ndata: a\n\n", []sseEvent{{"e", "a"}}},
		{"incomplete event is discarded", "data: a\n\nevent: e\ndata: b\n", []sseEvent{{"message", "a"}}},
		{"field names are case sensitive", "Data: a\n\ndata: b\n\n", []sseEvent{{"message", "b"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for name, r := range map[string]io.Reader{
				"whole":    strings.NewReader(tt.in),
				"one byte": iotest.OneByteReader(strings.NewReader(tt.in)),
			} {
				got, err := decodeAll(r, 1<<20)
				if err != io.EOF {
					t.Errorf("%s: err = %v, want io.EOF", name, err)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("%s: events (-want +got):\n%s", name, diff)
				}
			}
		})
	}
}

func TestSSEDecoderLimits(t *testing.T) {
	for _, in := range []string{
		"data: " + strings.Repeat("x", 100) + "\n\n",
		strings.Repeat("data: "+strings.Repeat("x", 20)+"\n", 10) + "\n",
		": " + strings.Repeat("x", 100) + "\n",
	} {
		if _, err := decodeAll(strings.NewReader(in), 64); !errors.Is(err, errEventTooLarge) {
			t.Errorf("err = %v, want errEventTooLarge", err)
		}
	}
}

func TestSSEDecoderReadErrorIsSticky(t *testing.T) {
	boom := errors.New("connection reset")
	d := newSSEDecoder(io.MultiReader(strings.NewReader("data: a\n\ndata: b"), iotest.ErrReader(boom)), 1<<20)
	if ev, err := d.Next(); err != nil || ev.Data != "a" {
		t.Fatalf("Next = %v, %v", ev, err)
	}
	for range 2 {
		if _, err := d.Next(); err != boom {
			t.Fatalf("err = %v, want %v", err, boom)
		}
	}
}

// FuzzSSE checks that the decoder never panics, never returns a line break in an event
// type or a CR in data, and decodes any split of its input as it decodes the whole.
func FuzzSSE(f *testing.F) {
	for _, s := range []string{
		"event: ping\ndata: {\"type\": \"ping\"}\n\n",
		"data: {\"a\":\ndata: 1}\r\n\r\n",
		": c\revent: e\rid: 1\rdata\r\r",
		"\xEF\xBB\xBFevent: message_stop\ndata: {}\n\n",
		"data: a\r",
		"\r\n\r\n\n\r",
	} {
		f.Add([]byte(s), uint16(3))
	}
	if files, _ := filepath.Glob(filepath.Join("testdata", "*.sse")); len(files) > 0 {
		for _, name := range files {
			if b, err := os.ReadFile(name); err == nil {
				f.Add(b, uint16(len(b)/7))
			}
		}
	}
	f.Fuzz(func(t *testing.T, in []byte, step uint16) {
		const max = 1024
		want, wantErr := decodeAll(strings.NewReader(string(in)), max)
		if wantErr != io.EOF && !errors.Is(wantErr, errEventTooLarge) {
			t.Fatalf("err = %v", wantErr)
		}
		for _, ev := range want {
			if strings.ContainsAny(ev.Type, "\r\n") || strings.ContainsRune(ev.Data, '\r') {
				t.Fatalf("event %q holds a line break", ev)
			}
		}
		check := func(name string, r io.Reader) {
			got, err := decodeAll(r, max)
			if err != wantErr {
				t.Fatalf("%s: err = %v, want %v", name, err, wantErr)
			}
			if !slices.Equal(want, got) { // cmp.Diff only on failure: it is slow
				t.Fatalf("%s: events differ (-whole +split):\n%s", name, cmp.Diff(want, got))
			}
		}
		// One byte per read splits at every boundary at once; then one split at a time.
		check("one byte", iotest.OneByteReader(strings.NewReader(string(in))))
		if len(in) <= 64 {
			for i := range len(in) + 1 {
				check("split", &splitReader{pieces: []string{string(in[:i]), string(in[i:])}})
			}
		} else {
			i := int(step) % (len(in) + 1)
			check("split", &splitReader{pieces: []string{string(in[:i]), string(in[i:])}})
		}
		var pieces []string
		for i, n := 0, int(step%64)+1; i < len(in); i += n {
			pieces = append(pieces, string(in[i:min(i+n, len(in))]))
		}
		check("steps", &splitReader{pieces: pieces})
	})
}
