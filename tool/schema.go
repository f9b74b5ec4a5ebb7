package tool

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/agate-gw/agate"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// maxViolations bounds the violations one validation error lists.
const maxViolations = 10

// validate checks args (empty: {}) against sch. The error is agate.EInvalid with a message
// for the model, such as
// "arguments do not match the schema: /url: missing property; /count: want integer, got string".
func validate(sch *jsonschema.Schema, args json.RawMessage) error {
	if len(bytes.TrimSpace(args)) == 0 {
		args = json.RawMessage("{}")
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(args))
	if err != nil {
		return agate.Errorf(agate.EInvalid, "arguments are not valid JSON: %v", err)
	}
	err = sch.Validate(inst)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return agate.Wrap(agate.EInvalid, err, "arguments could not be validated")
	}
	var list []string
	seen := map[string]bool{}
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			list = append(list, s)
		}
	}
	violations(ve, add)
	if len(list) == 0 { // cannot happen: a failed validation has a leaf
		list = []string{"(root): invalid"}
	}
	more := ""
	if len(list) > maxViolations {
		more = fmt.Sprintf("; and %d more", len(list)-maxViolations)
		list = list[:maxViolations]
	}
	return agate.Errorf(agate.EInvalid, "arguments do not match the schema: %s%s", strings.Join(list, "; "), more)
}

// violations calls add with one line per leaf error of the tree e.
func violations(e *jsonschema.ValidationError, add func(string)) {
	if len(e.Causes) > 0 {
		for _, c := range e.Causes {
			violations(c, add)
		}
		return
	}
	loc := e.InstanceLocation
	switch k := e.ErrorKind.(type) {
	case *kind.Required:
		for _, p := range k.Missing {
			add(pointer(append(loc[:len(loc):len(loc)], p)) + ": missing property")
		}
	case *kind.AdditionalProperties:
		for _, p := range k.Properties {
			add(pointer(append(loc[:len(loc):len(loc)], p)) + ": property not allowed")
		}
	case *kind.Type:
		add(fmt.Sprintf("%s: want %s, got %s", pointer(loc), strings.Join(k.Want, " or "), k.Got))
	case *kind.FalseSchema:
		add(pointer(loc) + ": not allowed")
	default:
		// The library's own English message, without its "at '<location>': " prefix.
		msg := (&jsonschema.ValidationError{ErrorKind: e.ErrorKind}).Error()
		add(pointer(loc) + ": " + strings.TrimPrefix(msg, "at '': "))
	}
}

// pointer renders an instance location as a JSON Pointer; the whole arguments object is
// "(root)".
func pointer(tokens []string) string {
	if len(tokens) == 0 {
		return "(root)"
	}
	var b strings.Builder
	for _, t := range tokens {
		b.WriteByte('/')
		b.WriteString(strings.NewReplacer("~", "~0", "/", "~1").Replace(t))
	}
	return b.String()
}
