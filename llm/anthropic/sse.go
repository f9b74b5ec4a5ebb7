package anthropic

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// errEventTooLarge is returned by sseDecoder.Next when a line or an event's data exceeds the
// decoder's limit.
var errEventTooLarge = errors.New("server-sent event too large")

// sseEvent is one event dispatched by an sseDecoder.
type sseEvent struct {
	Type string // the "event" field; "message" when the event had none
	Data string // the "data" lines joined with "\n"
}

// sseDecoder reads server-sent events the way the WHATWG HTML rules interpret an event
// stream, keeping only what the Messages API uses: lines end with CRLF, LF or CR (also when
// the two bytes of a CRLF arrive in different reads); a leading byte order mark is skipped;
// lines that start with ":" are comments; "field:value" drops one space after the colon;
// "data" lines accumulate, joined with "\n"; "event" names the event; a blank line
// dispatches it unless it has no data; other fields ("id", "retry", …) are ignored. At the
// end of the stream an incomplete event is discarded.
//
// It is a trimmed copy of llm/openai's decoder. It never reads ahead of what a dispatch
// needs and is not safe for concurrent use.
type sseDecoder struct {
	r       *bufio.Reader
	max     int    // limit on a line and on an event's data, in bytes
	line    []byte // the line being read
	data    []byte // the data buffer, each line followed by '\n'
	typ     string // the event type buffer
	skipLF  bool   // the previous line ended with CR: a following LF belongs to it
	started bool   // the first line (where a BOM may be) has been read
	err     error  // sticky error
}

// newSSEDecoder returns a decoder reading r that refuses lines and events longer than max
// bytes with errEventTooLarge.
func newSSEDecoder(r io.Reader, max int) *sseDecoder {
	return &sseDecoder{r: bufio.NewReader(r), max: max}
}

var bom = []byte("\xEF\xBB\xBF")

// Next returns the next event. At the end of the stream it returns io.EOF; any read error
// is returned as is. Once it has returned an error it returns the same error again.
func (d *sseDecoder) Next() (sseEvent, error) {
	if d.err != nil {
		return sseEvent{}, d.err
	}
	for {
		line, err := d.readLine()
		if err != nil {
			d.err = err
			return sseEvent{}, err
		}
		if !d.started {
			d.started = true
			line = bytes.TrimPrefix(line, bom)
		}
		if len(line) == 0 { // dispatch
			if len(d.data) == 0 {
				d.typ = ""
				continue
			}
			ev := sseEvent{Type: d.typ, Data: string(d.data[:len(d.data)-1])}
			if ev.Type == "" {
				ev.Type = "message"
			}
			d.data, d.typ = d.data[:0], ""
			return ev, nil
		}
		if line[0] == ':' { // comment
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "event":
			d.typ = string(value)
		case "data":
			if len(d.data)+len(value)+1 > d.max {
				d.err = errEventTooLarge
				return sseEvent{}, d.err
			}
			d.data = append(d.data, value...)
			d.data = append(d.data, '\n')
		}
	}
}

// readLine returns the next line without its terminator. The result is valid until the
// next call. A partial line at the end of the stream is discarded.
func (d *sseDecoder) readLine() ([]byte, error) {
	d.line = d.line[:0]
	for {
		b, err := d.r.ReadByte()
		if err != nil {
			return nil, err
		}
		if d.skipLF {
			d.skipLF = false
			if b == '\n' {
				continue
			}
		}
		switch b {
		case '\r':
			d.skipLF = true
			return d.line, nil
		case '\n':
			return d.line, nil
		}
		if len(d.line) >= d.max {
			return nil, errEventTooLarge
		}
		d.line = append(d.line, b)
	}
}
