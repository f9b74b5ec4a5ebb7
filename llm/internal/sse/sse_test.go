package sse

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"
)

// decodeAll returns every event of r and the error that ended the stream.
func decodeAll(r io.Reader, max int) ([]Event, error) {
	d := NewDecoder(r, max)
	var evs []Event
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
		want []Event
	}{
		{"data with and without a space", "data: a\n\ndata:b\n\ndata:  c\n\n",
			[]Event{{"message", "a", ""}, {"message", "b", ""}, {"message", " c", ""}}},
		{"multi-line data", "data: {\"a\":\ndata: 1}\n\n", []Event{{"message", "{\"a\":\n1}", ""}}},
		{"CRLF", "data: a\r\ndata: b\r\n\r\n", []Event{{"message", "a\nb", ""}}},
		{"CR", "data: a\rdata: b\r\r", []Event{{"message", "a\nb", ""}}},
		{"mixed endings", "data: a\r\n\rdata: b\n\r\n", []Event{{"message", "a", ""}, {"message", "b", ""}}},
		{"comments", ": hi\ndata: a\n: mid\n\n:\n\n", []Event{{"message", "a", ""}}},
		{"event and id", "event: error\nid: 7\ndata: x\n\ndata: y\n\n",
			[]Event{{"error", "x", "7"}, {"message", "y", "7"}}},
		{"id with NUL is ignored", "id: 1\n\nid: a\x00b\ndata: x\n\n", []Event{{"message", "x", "1"}}},
		{"empty data dispatches", "data\n\ndata:\n\n", []Event{{"message", "", ""}, {"message", "", ""}}},
		{"no data, no event", "event: x\n\nretry: 10\nfoo: bar\n\ndata: z\n\n", []Event{{"message", "z", ""}}},
		{"byte order mark", "\xEF\xBB\xBFdata: a\n\n", []Event{{"message", "a", ""}}},
		{"BOM only at the start", "data: a\n\n\xEF\xBB\xBFdata: b\n\n", []Event{{"message", "a", ""}}},
		{"incomplete event is discarded", "data: a\n\ndata: b\n", []Event{{"message", "a", ""}}},
		{"partial line is discarded", "data: a\n\ndata: b", []Event{{"message", "a", ""}}},
		{"colon in value", "data: a: b\n\n", []Event{{"message", "a: b", ""}}},
		{"field names are case sensitive", "Data: a\n\ndata: b\n\n", []Event{{"message", "b", ""}}},
		{"DONE", "data: [DONE]\n\n", []Event{{"message", "[DONE]", ""}}},
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
		"data: " + strings.Repeat("x", 100) + "\n\n",                     // one long line
		strings.Repeat("data: "+strings.Repeat("x", 20)+"\n", 10) + "\n", // many lines
		": " + strings.Repeat("x", 100) + "\n",                           // a long comment
	} {
		_, err := decodeAll(strings.NewReader(in), 64)
		if !errors.Is(err, ErrTooLarge) {
			t.Errorf("err = %v, want ErrTooLarge", err)
		}
	}
}

func TestSSEDecoderReadError(t *testing.T) {
	boom := errors.New("connection reset")
	d := NewDecoder(io.MultiReader(strings.NewReader("data: a\n\ndata: b"), iotest.ErrReader(boom)), 1<<20)
	if ev, err := d.Next(); err != nil || ev.Data != "a" {
		t.Fatalf("Next = %v, %v", ev, err)
	}
	for range 2 { // sticky
		if _, err := d.Next(); err != boom {
			t.Fatalf("err = %v, want %v", err, boom)
		}
	}
}

func FuzzSSEDecoder(f *testing.F) {
	for _, s := range []string{
		"data: a\n\n",
		"data: {\"a\":\ndata: 1}\r\n\r\n",
		": c\revent: e\rid: 1\rdata\r\r",
		"\xEF\xBB\xBFdata: [DONE]\n\n",
		"data: a\r",
		"\r\n\r\n\n\r",
		"id: \x00\ndata:x\n\n",
	} {
		f.Add([]byte(s), uint16(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, step uint16) {
		const max = 256
		want, wantErr := decodeAll(strings.NewReader(string(in)), max)
		if wantErr != io.EOF && !errors.Is(wantErr, ErrTooLarge) {
			t.Fatalf("err = %v", wantErr)
		}
		for _, ev := range want {
			if strings.ContainsAny(ev.Type+ev.ID, "\r\n") || strings.ContainsRune(ev.Data, '\r') || strings.ContainsRune(ev.ID, 0) {
				t.Fatalf("event %q holds a line break or NUL", ev)
			}
		}
		check := func(name string, r io.Reader) {
			got, err := decodeAll(r, max)
			if err != wantErr {
				t.Fatalf("%s: err = %v, want %v", name, err, wantErr)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("%s: events differ (-whole +split):\n%s", name, diff)
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
