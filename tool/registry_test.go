package tool_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"
	"unicode/utf8"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/tool"
	"github.com/agate-gw/agate/tools"
	"github.com/google/go-cmp/cmp"
)

func okFunc(context.Context, json.RawMessage) (string, error) { return "ok", nil }

const objectParams = `{"type":"object","properties":{"text":{"type":"string"}}}`

// toolFile returns a catalogue file with the given fields replacing the defaults; a nil value
// removes the field.
func toolFile(t *testing.T, name string, override map[string]any) *fstest.MapFile {
	t.Helper()
	f := map[string]any{
		"name":        name,
		"description": "a tool",
		"parameters":  json.RawMessage(objectParams),
		"target":      "inprocess",
	}
	for k, v := range override {
		if v == nil {
			delete(f, k)
		} else {
			f[k] = v
		}
	}
	data, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return &fstest.MapFile{Data: data}
}

func TestLoadRefusesABadToolFileNamingItAndTheProblem(t *testing.T) {
	builtins := map[string]tool.Func{"good": okFunc, "x": okFunc, "bad": okFunc}
	tests := []struct {
		name  string
		files fstest.MapFS
		want  []string // substrings of the error
	}{
		{"invalid JSON", fstest.MapFS{"bad.json": {Data: []byte(`{"name": "bad",`)}},
			[]string{"bad.json: invalid tool file: unexpected end of the file"}},
		{"invalid JSON with a line", fstest.MapFS{"bad.json": {Data: []byte("{\n\"name\": \"bad\",\n}")}},
			[]string{"bad.json: invalid tool file: line 3: invalid character '}'"}},
		{"data after the object", fstest.MapFS{"bad.json": {Data: append(toolFile(t, "bad", nil).Data, []byte(` {}`)...)}},
			[]string{"bad.json: invalid tool file: data after the JSON object"}},
		{"unknown field", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{"strict": true})},
			[]string{`bad.json: invalid tool file: unknown field "strict"`}},
		{"missing name", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{"name": nil})},
			[]string{`bad.json: missing "name"`}},
		{"invalid name", fstest.MapFS{"bad tool.json": toolFile(t, "bad tool", nil)},
			[]string{`bad tool.json: invalid name "bad tool"`}},
		{"name too long", fstest.MapFS{strings.Repeat("a", 65) + ".json": toolFile(t, strings.Repeat("a", 65), nil)},
			[]string{strings.Repeat("a", 65) + `.json: invalid name`}},
		{"name differs from the file name", fstest.MapFS{"bad.json": toolFile(t, "good", nil)},
			[]string{`bad.json: name "good" does not match the file name (want "bad")`}},
		{"missing parameters", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{"parameters": nil})},
			[]string{`bad.json: missing "parameters"`}},
		{"parameters not a schema", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{
			"parameters": json.RawMessage(`{"type":"object","properties":{"n":{"type":"strnig"}}}`)})},
			[]string{"bad.json: parameters: not a valid JSON Schema: /properties/n/type: value must be one of"}},
		{"parameters with a bad keyword value", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{
			"parameters": json.RawMessage(`{"type":"object","required":"n"}`)})},
			[]string{"bad.json: parameters: not a valid JSON Schema: /required: want array, got string"}},
		{"parameters of an array", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{
			"parameters": json.RawMessage(`{"type":"array"}`)})},
			[]string{`bad.json: parameters: the arguments must be an object: want "type": "object"`}},
		{"parameters without a type", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{
			"parameters": json.RawMessage(`{"properties":{}}`)})},
			[]string{`bad.json: parameters: the arguments must be an object`}},
		{"parameters not an object", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{
			"parameters": json.RawMessage(`true`)})},
			[]string{`bad.json: parameters: want a JSON Schema object`}},
		{"parameters of another draft", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{
			"parameters": json.RawMessage(`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object"}`)})},
			[]string{`bad.json: parameters: unsupported "$schema"`}},
		{"parameters referring to another document", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{
			"parameters": json.RawMessage(`{"type":"object","properties":{"a":{"$ref":"https://example.com/a.json"}}}`)})},
			[]string{`bad.json: parameters: $ref "https://example.com/a.json": a tool schema must be self-contained`}},
		{"unknown target", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{"target": "grpc"})},
			[]string{`bad.json: invalid target "grpc": want "inprocess" or "kafka"`}},
		{"missing target", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{"target": nil})},
			[]string{`bad.json: missing "target"`}},
		{"inprocess without a built-in", fstest.MapFS{"nobody.json": toolFile(t, "nobody", nil)},
			[]string{`nobody.json: target "inprocess" but there is no built-in tool "nobody"`}},
		{"zero timeout", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{"timeout": "0s"})},
			[]string{`bad.json: invalid timeout "0s": want more than 0 and at most 10m0s`}},
		{"negative timeout", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{"timeout": "-1s"})},
			[]string{`bad.json: invalid timeout "-1s"`}},
		{"timeout over 10m", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{"timeout": "10m1s"})},
			[]string{`bad.json: invalid timeout "10m1s": want more than 0 and at most 10m0s`}},
		{"timeout not a duration", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{"timeout": "soon"})},
			[]string{`bad.json: invalid timeout "soon": want a duration`}},
		{"unknown risk", fstest.MapFS{"bad.json": toolFile(t, "bad", map[string]any{"risk": "medium"})},
			[]string{`bad.json: invalid risk "medium": want "low" or "high"`}},
		{"a directory named .json", fstest.MapFS{"bad.json/x": {Data: []byte("{}")}},
			[]string{"bad.json: is a directory"}},
		{"the bad file among good ones", fstest.MapFS{
			"good.json": toolFile(t, "good", nil),
			"x.json":    toolFile(t, "x", map[string]any{"risk": "extreme"}),
		}, []string{`x.json: invalid risk "extreme"`}},
		{"no tools", fstest.MapFS{"README.md": {Data: []byte("hi")}},
			[]string{"no *.json tool files"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := tool.Load(tt.files, builtins)
			if err == nil {
				t.Fatalf("Load succeeded with tools %v, want an error", r.Names())
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestShippedCatalogueLoadsWithTheBuiltins(t *testing.T) {
	r, err := tool.Load(tools.Catalogue(), tool.Builtins(tool.BuiltinConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"echo", "http_fetch", "timestamp"}, r.Names()); diff != "" {
		t.Errorf("tools (-want +got):\n%s", diff)
	}
	for _, s := range r.List() {
		if s.Target != tool.TargetInProcess || s.Description == "" || s.Timeout <= 0 {
			t.Errorf("%s: target %q, description %q, timeout %s", s.Name, s.Target, s.Description, s.Timeout)
		}
	}
	specs := r.Specs(r.Names()...)
	if len(specs) != 3 {
		t.Fatalf("Specs gave %d tools, want 3", len(specs))
	}
	var params struct {
		Type     string   `json:"type"`
		Required []string `json:"required"`
	}
	if err := json.Unmarshal(specs[0].Parameters, &params); err != nil {
		t.Fatal(err)
	}
	if specs[0].Name != "echo" || params.Type != "object" || !cmp.Equal(params.Required, []string{"text"}) {
		t.Errorf("echo spec = %s %s", specs[0].Name, specs[0].Parameters)
	}
}

func TestCatalogueDefaultsAndLookups(t *testing.T) {
	fsys := fstest.MapFS{
		"remote.json": toolFile(t, "remote", map[string]any{"target": "kafka"}),
		"local.json":  toolFile(t, "local", map[string]any{"timeout": "2m", "risk": "high"}),
		"notes.txt":   {Data: []byte("not a tool")},
	}
	r, err := tool.Load(fsys, map[string]tool.Func{"local": okFunc, "unused": okFunc})
	if err != nil {
		t.Fatal(err)
	}
	want := []tool.Spec{
		{Name: "local", Description: "a tool", Parameters: json.RawMessage(objectParams), Target: "inprocess", Timeout: 2 * time.Minute, Risk: "high"},
		{Name: "remote", Description: "a tool", Parameters: json.RawMessage(objectParams), Target: "kafka", Timeout: 30 * time.Second, Risk: "low"},
	}
	if diff := cmp.Diff(want, r.List()); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	if s, ok := r.Get("remote"); !ok || s.Target != "kafka" {
		t.Errorf("Get(remote) = %+v, %v", s, ok)
	}
	if _, ok := r.Get("unused"); ok {
		t.Error("a built-in without a catalogue file is a tool")
	}
	wantTools := []agate.Tool{
		{Name: "remote", Description: "a tool", Parameters: json.RawMessage(objectParams)},
		{Name: "local", Description: "a tool", Parameters: json.RawMessage(objectParams)},
	}
	if diff := cmp.Diff(wantTools, r.Specs("remote", "nope", "local", "remote")); diff != "" {
		t.Errorf("Specs (-want +got):\n%s", diff)
	}
	if got := r.Specs(); len(got) != 0 {
		t.Errorf("Specs() = %v, want none", got)
	}
	// Specs hands out copies: changing one does not change the catalogue.
	r.Specs("local")[0].Parameters[0] = 'X'
	if s, _ := r.Get("local"); string(s.Parameters) != objectParams {
		t.Errorf("parameters changed to %s", s.Parameters)
	}
}

const strictParams = `{"type":"object","properties":{"url":{"type":"string"},"count":{"type":"integer","minimum":1}},` +
	`"required":["url"],"additionalProperties":false}`

func strictRegistry(t *testing.T, run tool.Func, timeout string) *tool.Registry {
	t.Helper()
	r, err := tool.Load(fstest.MapFS{
		"t.json": toolFile(t, "t", map[string]any{"parameters": json.RawMessage(strictParams), "timeout": timeout}),
		"k.json": toolFile(t, "k", map[string]any{"target": "kafka"}),
	}, map[string]tool.Func{"t": run})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestValidateTellsTheModelWhatIsWrong(t *testing.T) {
	r := strictRegistry(t, okFunc, "")
	tests := []struct {
		name, tool, args string
		want             string // the error message, "" for none
	}{
		{"good", "t", `{"url":"https://example.com","count":2}`, ""},
		{"good without optional", "t", `{"url":"x"}`, ""},
		{"missing required", "t", `{"count":2}`, "arguments do not match the schema: /url: missing property"},
		{"empty counts as {}", "t", ``, "arguments do not match the schema: /url: missing property"},
		{"wrong type", "t", `{"url":"x","count":"2"}`, "arguments do not match the schema: /count: want integer, got string"},
		{"two violations", "t", `{"count":"2"}`, "arguments do not match the schema: /url: missing property; /count: want integer, got string"},
		{"extra property", "t", `{"url":"x","extra":1}`, "arguments do not match the schema: /extra: property not allowed"},
		{"other keyword", "t", `{"url":"x","count":0}`, "arguments do not match the schema: /count: minimum: got 0, want 1"},
		{"not an object", "t", `["x"]`, "arguments do not match the schema: (root): want object, got array"},
		{"not JSON", "t", `{"url": `, "arguments are not valid JSON: unexpected EOF"},
		{"trailing data", "t", `{"url":"x"} {}`, "arguments are not valid JSON: invalid character after top-level value"},
		{"unknown tool", "nope", `{}`, `unknown tool "nope"`},
		{"kafka tool is validated too", "k", `{"text":1}`, "arguments do not match the schema: /text: want string, got number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.Validate(tt.tool, json.RawMessage(tt.args))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate succeeded, want %q", tt.want)
			}
			if got := agate.ErrorMessage(err); got != tt.want {
				t.Errorf("message = %q\nwant      %q", got, tt.want)
			}
			if code := agate.ErrorCode(err); code != agate.EInvalid {
				t.Errorf("code = %q, want %q", code, agate.EInvalid)
			}
		})
	}
}

func TestRunGivesTheToolsOutcomeAsAResult(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tests := []struct {
		name    string
		run     tool.Func
		timeout string
		max     int
		want    tool.Result
	}{
		{"output", func(context.Context, json.RawMessage) (string, error) { return "fine", nil }, "", 0,
			tool.Result{Text: "fine"}},
		{"error", func(context.Context, json.RawMessage) (string, error) { return "", errors.New("no such page") }, "", 0,
			tool.Result{Text: "no such page", IsError: true}},
		{"panic", func(context.Context, json.RawMessage) (string, error) { panic("nil map") }, "", 0,
			tool.Result{Text: "the tool failed with an internal error", IsError: true}},
		{"timeout", func(ctx context.Context, _ json.RawMessage) (string, error) {
			<-ctx.Done()
			return "", ctx.Err()
		}, "20ms", 0, tool.Result{Text: "tool timed out after 20ms", IsError: true}},
		{"timeout of a tool that ignores its context", func(context.Context, json.RawMessage) (string, error) {
			<-release
			return "late", nil
		}, "20ms", 0, tool.Result{Text: "tool timed out after 20ms", IsError: true}},
		{"truncated at a rune boundary", func(context.Context, json.RawMessage) (string, error) {
			return "aéééééé", nil // 13 bytes; byte 10 is inside the fifth é
		}, "", 10, tool.Result{Text: "aéééé\n…[truncated: 9 of 13 bytes shown]", Truncated: true}},
		{"error text truncated too", func(context.Context, json.RawMessage) (string, error) {
			return "", errors.New(strings.Repeat("x", 20))
		}, "", 10, tool.Result{Text: "xxxxxxxxxx\n…[truncated: 10 of 20 bytes shown]", IsError: true, Truncated: true}},
		{"exactly at the limit", func(context.Context, json.RawMessage) (string, error) { return "0123456789", nil }, "", 10,
			tool.Result{Text: "0123456789"}},
		{"invalid UTF-8 replaced", func(context.Context, json.RawMessage) (string, error) { return "a\xffb", nil }, "", 0,
			tool.Result{Text: "a\uFFFDb"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := strictRegistry(t, tt.run, tt.timeout)
			r.MaxResultBytes = tt.max
			got, err := r.Run(context.Background(), "t", json.RawMessage(`{"url":"x"}`))
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Result (-want +got):\n%s", diff)
			}
			if !utf8.ValidString(got.Text) {
				t.Errorf("Text %q is not valid UTF-8", got.Text)
			}
		})
	}
}

func TestRunRefusesWhatItCannotRun(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	r := strictRegistry(t, func(context.Context, json.RawMessage) (string, error) {
		mu.Lock()
		calls++
		mu.Unlock()
		return "ran", nil
	}, "")
	for _, tc := range []struct{ tool, args, want string }{
		{"nope", `{}`, `unknown tool "nope"`},
		{"k", `{}`, `tool "k" does not run in process (target "kafka")`},
		{"t", `{"count":2}`, "arguments do not match the schema: /url: missing property"},
		{"t", `nonsense`, "arguments are not valid JSON"},
	} {
		_, err := r.Run(context.Background(), tc.tool, json.RawMessage(tc.args))
		if agate.ErrorCode(err) != agate.EInvalid || !strings.Contains(agate.ErrorMessage(err), tc.want) {
			t.Errorf("Run(%s, %s) error = %v, want %s containing %q", tc.tool, tc.args, err, agate.EInvalid, tc.want)
		}
	}
	if calls != 0 {
		t.Errorf("the tool ran %d times", calls)
	}
}

func TestRunReturnsTheCallersCancellation(t *testing.T) {
	started := make(chan struct{})
	r := strictRegistry(t, func(ctx context.Context, _ json.RawMessage) (string, error) {
		close(started)
		<-ctx.Done()
		return "", ctx.Err()
	}, "1m")
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	if _, err := r.Run(ctx, "t", json.RawMessage(`{"url":"x"}`)); !errors.Is(err, context.Canceled) {
		t.Errorf("Run error = %v, want context.Canceled", err)
	}
}
