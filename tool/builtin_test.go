package tool_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/agate-gw/agate/tool"
	"github.com/agate-gw/agate/tools"
	"github.com/google/go-cmp/cmp"
)

// shipped loads the built-in catalogue with the built-in tools configured by cfg.
func shipped(t *testing.T, cfg tool.BuiltinConfig) *tool.Registry {
	t.Helper()
	r, err := tool.Load(tools.Catalogue(), tool.Builtins(cfg))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestEchoAndTimestamp(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 30, 0, 0, time.UTC)
	r := shipped(t, tool.BuiltinConfig{Now: func() time.Time { return now }})
	tests := []struct {
		name, tool, args string
		want             tool.Result
	}{
		{"echo", "echo", `{"text":"héllo, wörld"}`, tool.Result{Text: "héllo, wörld"}},
		{"echo empty", "echo", `{"text":""}`, tool.Result{Text: ""}},
		{"timestamp in UTC by default", "timestamp", `{}`, tool.Result{Text: "2026-03-01T12:30:00Z"}},
		{"timestamp in a zone", "timestamp", `{"timezone":"Asia/Tokyo"}`, tool.Result{Text: "2026-03-01T21:30:00+09:00"}},
		{"timestamp in a zone with DST", "timestamp", `{"timezone":"America/New_York"}`, tool.Result{Text: "2026-03-01T07:30:00-05:00"}},
		{"timestamp in an unknown zone", "timestamp", `{"timezone":"Mars/Olympus"}`, tool.Result{IsError: true,
			Text: `unknown time zone "Mars/Olympus": want an IANA name such as "Europe/Paris", or none for UTC`}},
		{"timestamp refuses the server's zone", "timestamp", `{"timezone":"Local"}`, tool.Result{IsError: true,
			Text: `unknown time zone "Local": want an IANA name such as "Europe/Paris", or none for UTC`}},
		{"timestamp refuses a path", "timestamp", `{"timezone":"../../etc/passwd"}`, tool.Result{IsError: true,
			Text: `unknown time zone "../../etc/passwd": want an IANA name such as "Europe/Paris", or none for UTC`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Run(context.Background(), tt.tool, json.RawMessage(tt.args))
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Result (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBuiltinConfigValidateNamesTheBadAllowEntry(t *testing.T) {
	good := tool.BuiltinConfig{FetchAllow: []string{
		"example.com", "Example.ORG.", "api.example.com:8443", "*.example.net", "*.example.net:443",
		"10.0.0.7", "10.0.0.7:8080", "[::1]:8080", "[::1]", "::1",
	}}
	if err := good.Validate(); err != nil {
		t.Errorf("Validate(%q): %v", good.FetchAllow, err)
	}
	for _, bad := range []string{"", "*", "https://example.com", "example.com:0", "example.com:http",
		"*.10.0.0.7", "ex*ample.com", "*.", "example.com:99999"} {
		err := tool.BuiltinConfig{FetchAllow: []string{"example.com", bad}}.Validate()
		if err == nil {
			t.Errorf("Validate accepts %q", bad)
			continue
		}
		if want := `fetch allow entry "` + bad + `"`; !contains(err.Error(), want) {
			t.Errorf("Validate(%q) = %q, want it to name the entry", bad, err)
		}
	}
}
