// Package sse decodes server-sent event streams, as the LLM providers send them.
package sse

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// ErrTooLarge is returned by Decoder.Next when a line or an event's data exceeds the
// decoder's limit.
var ErrTooLarge = errors.New("server-sent event too large")

// Event is one event dispatched by an Decoder.
type Event struct {
	Type string // the "event" field; "message" when the event had none
	Data string // the "data" lines joined with "\n"
	ID   string // the last event ID seen so far in the stream
}

// Decoder reads server-sent events from a byte stream, following the WHATWG HTML rules
// for interpreting an event stream: lines end with CRLF, LF or CR (also when the two bytes
// of a CRLF arrive in different reads); a leading byte order mark is skipped; lines that
// start with ":" are comments; "field:value" drops one space after the colon, and a line
// without a colon is a field with an empty value; "data" lines accumulate, joined with
// "\n"; a blank line dispatches the event unless it has no data; unknown fields and
// "retry" are ignored; an "id" containing NUL is ignored. At the end of the stream an
// incomplete event is discarded.
//
// The decoder never reads ahead of what a dispatch needs, so an event is returned as soon
// as its blank line has arrived. It is not safe for concurrent use.
type Decoder struct {
	r       *bufio.Reader
	max     int    // limit on a line and on an event's data, in bytes
	line    []byte // the line being read
	data    []byte // the data buffer, each line followed by '\n'
	typ     string // the event type buffer
	id      string // the last event ID buffer
	skipLF  bool   // the previous line ended with CR: a following LF belongs to it
	started bool   // the first line (where a BOM may be) has been read
	err     error  // sticky error
}

// NewDecoder returns a decoder reading r that refuses lines and events longer than max
// bytes with ErrTooLarge.
func NewDecoder(r io.Reader, max int) *Decoder {
	return &Decoder{r: bufio.NewReader(r), max: max}
}

var bom = []byte("\xEF\xBB\xBF")

// Next returns the next event. At the end of the stream it returns io.EOF; any read error
// is returned as is. Once it has returned an error it returns the same error again.
func (d *Decoder) Next() (Event, error) {
	if d.err != nil {
		return Event{}, d.err
	}
	for {
		line, err := d.readLine()
		if err != nil {
			d.err = err
			return Event{}, err
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
			ev := Event{Type: d.typ, Data: string(d.data[:len(d.data)-1]), ID: d.id}
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
				d.err = ErrTooLarge
				return Event{}, d.err
			}
			d.data = append(d.data, value...)
			d.data = append(d.data, '\n')
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				d.id = string(value)
			}
		}
	}
}

// readLine returns the next line without its terminator. The result is valid until the
// next call. A partial line at the end of the stream is discarded.
func (d *Decoder) readLine() ([]byte, error) {
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
			return nil, ErrTooLarge
		}
		d.line = append(d.line, b)
	}
}
