package opa

import (
	"fmt"

	"github.com/agate-gw/agate"
	"github.com/open-policy-agent/opa/v1/ast"
)

// inputValue is in as an OPA value: the value of in's JSON form (what Remote sends, so that
// both deciders see the same input), built without encoding and decoding JSON. The maps'
// values are converted by ast.InterfaceToValue, which handles the JSON types, []string and
// map[string]string itself and takes anything else (a settings struct, say) through JSON.
// One difference from JSON, OPA's: a uint64 of 1<<63 or more becomes a negative number.
func inputValue(in agate.PolicyInput) (ast.Value, error) {
	resource, err := mapValue(in.Resource)
	if err != nil {
		return nil, fmt.Errorf("resource: %w", err)
	}
	context, err := mapValue(in.Context)
	if err != nil {
		return nil, fmt.Errorf("context: %w", err)
	}
	usage, err := mapValue(in.Usage)
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	return ast.NewObject(
		ast.Item(ast.InternedTerm("principal"), ast.NewTerm(principalValue(in.Principal))),
		ast.Item(ast.InternedTerm("tenant"), ast.StringTerm(in.Tenant)),
		ast.Item(ast.InternedTerm("action"), ast.StringTerm(in.Action)),
		ast.Item(ast.InternedTerm("resource"), ast.NewTerm(resource)),
		ast.Item(ast.InternedTerm("context"), ast.NewTerm(context)),
		ast.Item(ast.InternedTerm("usage"), ast.NewTerm(usage)),
	), nil
}

// principalValue follows agate.Principal's JSON tags, omitempty included.
func principalValue(p agate.Principal) ast.Value {
	items := make([][2]*ast.Term, 0, 5)
	items = append(items,
		ast.Item(ast.InternedTerm("tenant"), ast.StringTerm(p.Tenant)),
		ast.Item(ast.InternedTerm("subject"), ast.StringTerm(p.Subject)),
	)
	if len(p.Scopes) > 0 {
		scopes := make([]*ast.Term, len(p.Scopes))
		for i, s := range p.Scopes {
			scopes[i] = ast.StringTerm(s)
		}
		items = append(items, ast.Item(ast.InternedTerm("scopes"), ast.ArrayTerm(scopes...)))
	}
	if p.Via != "" {
		items = append(items, ast.Item(ast.InternedTerm("via"), ast.StringTerm(p.Via)))
	}
	if p.KeyID != "" {
		items = append(items, ast.Item(ast.InternedTerm("key_id"), ast.StringTerm(p.KeyID)))
	}
	return ast.NewObject(items...)
}

// mapValue is m as an OPA value; a nil map is null, as in JSON.
func mapValue(m map[string]any) (ast.Value, error) {
	if m == nil {
		return ast.NullValue, nil
	}
	return ast.InterfaceToValue(m)
}
