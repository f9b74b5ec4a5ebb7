package httpapi

import (
	"fmt"
	"testing"

	"github.com/agate-gw/agate"
)

// FuzzMessageBody feeds arbitrary bodies through the decoding and validation of a user
// message: it must never panic, and every refusal must carry a client error code.
func FuzzMessageBody(f *testing.F) {
	for _, seed := range []string{
		`{"message":"hi"}`, `{"session_id":"6f1c8e9a-1b2c-4d3e-8f40-5a6b7c8d9e0f","message":"x","metadata":{"a":[1,{"b":null}]}}`,
		`{"message":"\ud800"}`, `{"message":1}`, `[]`, `{"message":"a"} x`, "{\"message\":\"\xff\"}", ``, `{"attachments":["a"],"message":" "}`,
	} {
		f.Add([]byte(seed))
	}
	s := &Server{}
	s.cfg.setDefaults()
	f.Fuzz(func(t *testing.T, body []byte) {
		var b messageBody
		err := decodeJSON(body, &b)
		if err == nil {
			_, err = s.inbound(agate.Principal{Tenant: "t"}, b)
		}
		if err != nil {
			if code := agate.ErrorCode(err); status(code) != 400 && status(code) != 413 {
				t.Fatalf("body %q refused with %s (%d), want a 400 or 413", body, code, status(code))
			}
		}
	})
}

func FuzzCursor(f *testing.F) {
	for _, seed := range []string{"", "0", "12", "12.345", "-1", "1.", ".5", "9223372036854775808", "1.2.3"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCursor(s)
		if err != nil {
			if agate.ErrorCode(err) != agate.EInvalidCursor {
				t.Fatalf("%q: %v", s, err)
			}
			return
		}
		if c.seq < 0 || c.offset < 0 {
			t.Fatalf("%q parsed to a negative position %+v", s, c)
		}
		canonical := fmt.Sprintf("%d.%d", c.seq, c.offset)
		if back, err := parseCursor(canonical); err != nil || back != c {
			t.Fatalf("%q: canonical form %q reads back as %+v, %v", s, canonical, back, err)
		}
	})
}
