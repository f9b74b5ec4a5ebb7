// Package tool is the tool catalogue: it loads tool specifications (one JSON file per tool),
// validates a model's arguments against each tool's JSON Schema, and runs the built-in tools
// in process under a timeout and an output limit.
//
// A catalogue file reads:
//
//	{
//	  "name": "echo",                 // ^[a-zA-Z0-9_-]{1,64}$, the file name without ".json"
//	  "description": "…",             // offered to the model
//	  "parameters": {"type": "object", …},   // JSON Schema (draft 2020-12) of the arguments
//	  "target": "inprocess",          // or "kafka": run by an executor through tool.requests
//	  "timeout": "10s",               // optional, default 30s, at most 10m
//	  "risk": "low"                   // optional, "low" (default) or "high"; for policy
//	}
package tool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/agate-gw/agate"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Targets: where a tool runs.
const (
	TargetInProcess = "inprocess" // a Func of this process, through Registry.Run
	TargetKafka     = "kafka"     // an executor consuming tool.requests
)

// Risk levels, for policy decisions.
const (
	RiskLow  = "low"
	RiskHigh = "high"
)

// Limits and defaults of the catalogue.
const (
	DefaultTimeout        = 30 * time.Second
	MaxTimeout            = 10 * time.Minute
	DefaultMaxResultBytes = 16 << 10
)

// Spec is one tool of the catalogue.
type Spec struct {
	Name        string
	Description string
	Parameters  json.RawMessage // JSON Schema of the arguments object, compacted
	Target      string          // TargetInProcess or TargetKafka
	Timeout     time.Duration   // > 0, at most MaxTimeout
	Risk        string          // RiskLow or RiskHigh
}

// Tool returns the spec as it is offered to a model.
func (s Spec) Tool() agate.Tool {
	return agate.Tool{Name: s.Name, Description: s.Description, Parameters: slices.Clone(s.Parameters)}
}

// Func is an in-process tool. It gets arguments that match the tool's schema and returns the
// text the model sees. An error is shown to the model as an error result with its message;
// a Func must return soon after ctx is done.
type Func func(ctx context.Context, args json.RawMessage) (string, error)

// Result is the outcome of running a tool, as the model sees it.
type Result struct {
	Text      string // valid UTF-8
	IsError   bool   // Text describes a failure
	Truncated bool   // Text was cut to the registry's MaxResultBytes
}

// Registry is a loaded catalogue. Its methods may be called concurrently; set its fields
// before its first use.
type Registry struct {
	// MaxResultBytes bounds a Result's Text (the truncation marker comes on top);
	// 0 means DefaultMaxResultBytes.
	MaxResultBytes int
	// Logger receives the stack of a Func that panicked; nil discards it.
	Logger *slog.Logger

	tools map[string]entry
	names []string // sorted
}

type entry struct {
	spec   Spec
	schema *jsonschema.Schema
	run    Func // nil unless spec.Target is TargetInProcess
	exec   Func // the built-in of the tool's name, whatever its target: what an executor runs
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// file is the JSON form of a catalogue file.
type file struct {
	Name        *string         `json:"name"`
	Description string          `json:"description"`
	Parameters  json.RawMessage `json:"parameters"`
	Target      string          `json:"target"`
	Timeout     string          `json:"timeout"`
	Risk        string          `json:"risk"`
}

// Load reads every *.json file at the root of fsys as one tool and compiles its schema.
// Each in-process tool must have its Func in builtins; builtins without a catalogue file are
// ignored (a catalogue disables a built-in by leaving it out). Load returns an error naming
// the file and the problem when a file is not valid JSON, has unknown fields, a missing or
// invalid name (or one that differs from the file name), parameters that are not a valid
// JSON Schema of an object, an unknown target or risk, a bad timeout, or an in-process tool
// without an implementation; and when the catalogue has no tool at all.
func Load(fsys fs.FS, builtins map[string]Func) (*Registry, error) {
	dir, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read tool catalogue: %w", err)
	}
	r := &Registry{tools: map[string]entry{}}
	for _, d := range dir {
		fname := d.Name()
		if path.Ext(fname) != ".json" {
			continue
		}
		if d.IsDir() {
			return nil, fmt.Errorf("tool catalogue: %s: is a directory, not a tool file", fname)
		}
		e, err := loadFile(fsys, fname, builtins)
		if err != nil {
			return nil, fmt.Errorf("tool catalogue: %s: %w", fname, err)
		}
		if _, dup := r.tools[e.spec.Name]; dup {
			return nil, fmt.Errorf("tool catalogue: %s: duplicate tool name %q", fname, e.spec.Name)
		}
		r.tools[e.spec.Name] = e
		r.names = append(r.names, e.spec.Name)
	}
	if len(r.names) == 0 {
		return nil, errors.New("tool catalogue: no *.json tool files")
	}
	slices.Sort(r.names)
	return r, nil
}

func loadFile(fsys fs.FS, fname string, builtins map[string]Func) (entry, error) {
	data, err := fs.ReadFile(fsys, fname)
	if err != nil {
		return entry{}, err
	}
	var f file
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return entry{}, fmt.Errorf("invalid tool file: %s", jsonError(data, err))
	}
	if dec.More() {
		return entry{}, errors.New("invalid tool file: data after the JSON object")
	}
	if _, err := dec.Token(); err == nil {
		return entry{}, errors.New("invalid tool file: data after the JSON object")
	}

	var e entry
	switch {
	case f.Name == nil || *f.Name == "":
		return entry{}, errors.New(`missing "name"`)
	case !nameRE.MatchString(*f.Name):
		return entry{}, fmt.Errorf(`invalid name %q: want 1 to 64 letters, digits, "_" or "-"`, *f.Name)
	case *f.Name+".json" != fname:
		return entry{}, fmt.Errorf(`name %q does not match the file name (want %q)`, *f.Name, strings.TrimSuffix(fname, ".json"))
	}
	e.spec.Name = *f.Name
	e.spec.Description = f.Description

	if e.schema, e.spec.Parameters, err = compileParameters(e.spec.Name, f.Parameters); err != nil {
		return entry{}, err
	}

	switch f.Target {
	case TargetInProcess:
		e.run = builtins[e.spec.Name]
		if e.run == nil {
			return entry{}, fmt.Errorf(`target "inprocess" but there is no built-in tool %q`, e.spec.Name)
		}
	case TargetKafka:
	case "":
		return entry{}, fmt.Errorf(`missing "target": want %q or %q`, TargetInProcess, TargetKafka)
	default:
		return entry{}, fmt.Errorf(`invalid target %q: want %q or %q`, f.Target, TargetInProcess, TargetKafka)
	}
	e.spec.Target = f.Target
	e.exec = builtins[e.spec.Name]

	e.spec.Timeout = DefaultTimeout
	if f.Timeout != "" {
		d, err := time.ParseDuration(f.Timeout)
		if err != nil {
			return entry{}, fmt.Errorf(`invalid timeout %q: want a duration such as "10s"`, f.Timeout)
		}
		if d <= 0 || d > MaxTimeout {
			return entry{}, fmt.Errorf(`invalid timeout %q: want more than 0 and at most %s`, f.Timeout, MaxTimeout)
		}
		e.spec.Timeout = d
	}

	switch f.Risk {
	case "":
		e.spec.Risk = RiskLow
	case RiskLow, RiskHigh:
		e.spec.Risk = f.Risk
	default:
		return entry{}, fmt.Errorf(`invalid risk %q: want %q or %q`, f.Risk, RiskLow, RiskHigh)
	}
	return e, nil
}

// jsonError says where in data a decoding error is.
func jsonError(data []byte, err error) string {
	var offset int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "unexpected end of the file"
	case errors.As(err, &se):
		offset = se.Offset
	case errors.As(err, &te):
		offset = te.Offset
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if offset < 0 || offset > int64(len(data)) {
		return msg
	}
	return fmt.Sprintf("line %d: %s", 1+bytes.Count(data[:offset], []byte("\n")), msg)
}

// compileParameters checks that raw is a draft 2020-12 JSON Schema of an object and compiles
// it. The schema must be self-contained: references to other documents are refused.
func compileParameters(name string, raw json.RawMessage) (*jsonschema.Schema, json.RawMessage, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil, errors.New(`missing "parameters": want the JSON Schema of the arguments object`)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, nil, fmt.Errorf("parameters: %w", err)
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return nil, nil, errors.New(`parameters: want a JSON Schema object with "type": "object"`)
	}
	if t, _ := obj["type"].(string); t != "object" {
		return nil, nil, errors.New(`parameters: the arguments must be an object: want "type": "object"`)
	}
	if s, ok := obj["$schema"]; ok {
		if u, _ := s.(string); strings.TrimSuffix(u, "#") != "https://json-schema.org/draft/2020-12/schema" {
			return nil, nil, fmt.Errorf(`parameters: unsupported "$schema" %v: want draft 2020-12`, s)
		}
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	c.UseLoader(jsonschema.SchemeURLLoader{}) // no file or network access for $ref
	loc := "urn:agate:tool:" + name
	if err := c.AddResource(loc, doc); err != nil {
		return nil, nil, fmt.Errorf("parameters: %w", err)
	}
	sch, err := c.Compile(loc)
	if err != nil {
		var sve *jsonschema.SchemaValidationError
		var ve *jsonschema.ValidationError
		if errors.As(err, &sve) && errors.As(sve.Err, &ve) {
			// Say where the schema breaks the metaschema, not just that it does.
			var list []string
			violations(ve, func(s string) { list = append(list, s) })
			return nil, nil, fmt.Errorf("parameters: not a valid JSON Schema: %s", strings.Join(list, "; "))
		}
		var le *jsonschema.LoadURLError
		if errors.As(err, &le) {
			return nil, nil, fmt.Errorf("parameters: $ref %q: a tool schema must be self-contained", le.URL)
		}
		return nil, nil, fmt.Errorf("parameters: not a valid JSON Schema: %w", err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return nil, nil, fmt.Errorf("parameters: %w", err)
	}
	return sch, compact.Bytes(), nil
}

// Get returns the named tool.
func (r *Registry) Get(name string) (Spec, bool) {
	e, ok := r.tools[name]
	if !ok {
		return Spec{}, false
	}
	s := e.spec
	s.Parameters = slices.Clone(s.Parameters)
	return s, true
}

// Names returns the names of all tools, sorted.
func (r *Registry) Names() []string { return slices.Clone(r.names) }

// List returns all tools, sorted by name.
func (r *Registry) List() []Spec {
	out := make([]Spec, 0, len(r.names))
	for _, n := range r.names {
		s, _ := r.Get(n)
		out = append(out, s)
	}
	return out
}

// Specs returns the named tools as they are offered to a model, in the order given. Unknown
// names and repeats are skipped; no names gives none, so an empty allow list offers nothing.
// To offer every tool, pass r.Names()....
func (r *Registry) Specs(names ...string) []agate.Tool {
	var out []agate.Tool
	seen := map[string]bool{}
	for _, n := range names {
		e, ok := r.tools[n]
		if !ok || seen[n] {
			continue
		}
		seen[n] = true
		out = append(out, e.spec.Tool())
	}
	return out
}

// Validate checks args against the named tool's schema. It returns an agate.EInvalid error
// when the tool is unknown, or when args are not JSON or do not match the schema; the
// message lists the violations and is meant for the model, so it can correct its call.
// Empty args count as {}.
func (r *Registry) Validate(name string, args json.RawMessage) error {
	e, ok := r.tools[name]
	if !ok {
		return agate.Errorf(agate.EInvalid, "unknown tool %q", name)
	}
	return validate(e.schema, args)
}

// Run validates args and runs the named in-process tool under its timeout.
//
// Run returns an agate.EInvalid error when the tool is unknown, is not in process, or args
// do not match its schema (see Validate), and ctx.Err() when ctx ends before the tool does.
// Everything that happens to the tool itself is a Result with a nil error: its output, its
// error, its timeout ("tool timed out after 10s") or its panic. Text longer than
// MaxResultBytes is cut at a UTF-8 boundary and marked. A Func that ignores its context
// keeps running in the background after its timeout; its result is dropped.
func (r *Registry) Run(ctx context.Context, name string, args json.RawMessage) (Result, error) {
	e, ok := r.tools[name]
	if !ok {
		return Result{}, agate.Errorf(agate.EInvalid, "unknown tool %q", name)
	}
	if e.run == nil {
		return Result{}, agate.Errorf(agate.EInvalid, "tool %q does not run in process (target %q)", name, e.spec.Target)
	}
	return r.run(ctx, name, e, e.run, args)
}

// Execute is Run for an executor (agate executor): it runs the built-in of the tool's
// name whatever the tool's target, with the same validation, timeout and limits. A tool
// without a built-in gives agate.EInvalid.
func (r *Registry) Execute(ctx context.Context, name string, args json.RawMessage) (Result, error) {
	e, ok := r.tools[name]
	if !ok {
		return Result{}, agate.Errorf(agate.EInvalid, "unknown tool %q", name)
	}
	if e.exec == nil {
		return Result{}, agate.Errorf(agate.EInvalid, "no built-in tool %q on this executor", name)
	}
	return r.run(ctx, name, e, e.exec, args)
}

func (r *Registry) run(ctx context.Context, name string, e entry, fn Func, args json.RawMessage) (Result, error) {
	if err := validate(e.schema, args); err != nil {
		return Result{}, err
	}
	if len(bytes.TrimSpace(args)) == 0 {
		args = json.RawMessage("{}")
	}

	tctx, cancel := context.WithTimeout(ctx, e.spec.Timeout)
	defer cancel()
	type outcome struct {
		text string
		err  error
	}
	done := make(chan outcome, 1) // buffered: a late Func never blocks
	go func() {
		defer func() {
			if p := recover(); p != nil {
				if r.Logger != nil {
					r.Logger.Error("tool panicked", "tool", name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				}
				done <- outcome{err: errors.New("the tool failed with an internal error")}
			}
		}()
		text, err := fn(tctx, slices.Clone(args))
		done <- outcome{text, err}
	}()

	var o outcome
	finished := false
	select {
	case o = <-done:
		finished = true
	case <-tctx.Done():
		select {
		case o = <-done:
			finished = true
		default:
		}
	}
	switch {
	case (!finished || o.err != nil) && ctx.Err() != nil:
		// The caller gave up (the turn was cancelled): there is no one to tell.
		return Result{}, ctx.Err()
	case !finished || o.err != nil && tctx.Err() != nil:
		// The tool's own deadline passed; an error it returned then is about the deadline.
		o = outcome{err: fmt.Errorf("tool timed out after %s", e.spec.Timeout)}
	}
	if o.err != nil {
		return r.result(o.err.Error(), true), nil
	}
	return r.result(o.text, false), nil
}

func (r *Registry) result(text string, isError bool) Result {
	limit := r.MaxResultBytes
	if limit <= 0 {
		limit = DefaultMaxResultBytes
	}
	text, truncated := truncate(strings.ToValidUTF8(text, "\uFFFD"), limit)
	return Result{Text: text, IsError: isError, Truncated: truncated}
}

// truncate cuts s to at most limit bytes at a rune boundary and appends a marker saying how
// much was kept. s must be valid UTF-8.
func truncate(s string, limit int) (string, bool) {
	if len(s) <= limit {
		return s, false
	}
	n := limit
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return fmt.Sprintf("%s\n…[truncated: %d of %d bytes shown]", s[:n], n, len(s)), true
}
