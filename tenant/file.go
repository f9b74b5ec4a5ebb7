package tenant

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// The settings file (conf/tenants.yaml documents every field):
//
//	defaults:            # every tenant's, each field overridden by the tenant's entry
//	  system_prompt: "…"
//	  budgets: {tokens_per_day: 0, personas: {name: 0}}
//	  rate_limits: {requests_per_minute: 0, tokens_per_minute: 0}
//	  routing: {allow: [], deny: []}
//	  fail_open: false
//	tenants:
//	  <name>: <same fields as defaults>
//
// A field that is absent (or null) is inherited from the defaults; a list (allow, deny)
// replaces the default list; personas add to the default personas, a persona named in both
// taking the tenant's budget.

// Load reads the settings file at path, and returns a registry serving it; Run keeps it up
// to date. log receives Run's reload reports (nil: discard).
//
// Errors are precise, and all of a file's are reported together, one per line, each as
// file:line:col: field path: problem, e.g.
//
//	conf/tenants.yaml:9:23: tenants.acme.budgets.tokens_per_day: want a whole number >= 0, got -5
//
// Refused: a file that cannot be read, is empty or is not YAML; unknown fields; values
// of the wrong type; negative budgets or limits; model patterns that are empty or not in
// path.Match syntax; empty tenant or persona names and names with surrounding spaces;
// duplicate keys.
func Load(path string, log *slog.Logger) (*Registry, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tenant settings: %w", err)
	}
	s, err := parse(path, src)
	if err != nil {
		return nil, err
	}
	r := &Registry{path: path, log: log}
	r.current.Store(s)
	return r, nil
}

// entry is the settings of the defaults or of one tenant, as written; nil: not set.
type entry struct {
	systemPrompt *string
	tokensPerDay *int64
	personas     map[string]int64
	rpm, tpm     *int64
	allow, deny  *[]string
	failOpen     *bool
}

// over returns base with e's fields in place of base's.
func (e entry) over(base Settings) Settings {
	s := base
	if e.systemPrompt != nil {
		s.SystemPrompt = *e.systemPrompt
	}
	if e.tokensPerDay != nil {
		s.TokensPerDay = *e.tokensPerDay
	}
	if len(e.personas) > 0 {
		s.PersonaTokensPerDay = maps.Clone(base.PersonaTokensPerDay)
		if s.PersonaTokensPerDay == nil {
			s.PersonaTokensPerDay = make(map[string]int64, len(e.personas))
		}
		maps.Copy(s.PersonaTokensPerDay, e.personas)
	}
	if e.rpm != nil {
		s.RequestsPerMinute = int(*e.rpm)
	}
	if e.tpm != nil {
		s.TokensPerMinute = int(*e.tpm)
	}
	if e.allow != nil {
		s.Allow = *e.allow
	}
	if e.deny != nil {
		s.Deny = *e.deny
	}
	if e.failOpen != nil {
		s.FailOpen = *e.failOpen
	}
	return s
}

// Known fields, in the order error messages list them.
var (
	topFields       = []string{"defaults", "tenants"}
	entryFields     = []string{"system_prompt", "budgets", "rate_limits", "routing", "fail_open"}
	budgetFields    = []string{"tokens_per_day", "personas"}
	rateLimitFields = []string{"requests_per_minute", "tokens_per_minute"}
	routingFields   = []string{"allow", "deny"}
)

// maxReported bounds the errors reported for one file.
const maxReported = 20

// parse parses and validates a settings file's content; file names it in errors.
func parse(file string, src []byte) (*snapshot, error) {
	dec := yaml.NewDecoder(bytes.NewReader(src))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: the file is empty; want a mapping with defaults and tenants", file)
		}
		return nil, syntaxError(file, err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); err == nil {
		return nil, fmt.Errorf("%s:%d:%d: a second YAML document; want only one", file, more.Line, more.Column)
	} else if !errors.Is(err, io.EOF) {
		return nil, syntaxError(file, err)
	}

	p := &parser{file: file}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = deref(root.Content[0])
	}
	if isNull(root) {
		return nil, fmt.Errorf("%s: the file holds no settings; want a mapping with defaults and tenants", file)
	}
	var defaults entry
	names := map[string]entry{}
	p.fields(root, "", topFields, func(key string, v *yaml.Node) {
		switch key {
		case "defaults":
			defaults = p.entry(v, "defaults")
		case "tenants":
			p.names(v, "tenants", "tenant", func(name, at string, v *yaml.Node) {
				names[name] = p.entry(v, at)
			})
		}
	})
	if len(p.errs) > 0 {
		if len(p.errs) > maxReported {
			n := len(p.errs) - maxReported
			p.errs = append(p.errs[:maxReported], fmt.Errorf("%s: %d more errors", file, n))
		}
		return nil, errors.Join(p.errs...)
	}
	s := &snapshot{defaults: defaults.over(Settings{}), tenants: make(map[string]Settings, len(names)), sum: sha256.Sum256(src)}
	for name, e := range names {
		s.tenants[name] = e.over(s.defaults)
	}
	return s, nil
}

// yamlLine matches the position of yaml.v3's syntax errors.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

// syntaxError puts file and line in front of a yaml.v3 syntax error.
func syntaxError(file string, err error) error {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s:%s: %s", file, m[1], msg[len(m[0]):])
	}
	return fmt.Errorf("%s: %s", file, strings.TrimPrefix(msg, "yaml: "))
}

// parser validates the nodes of a file, collecting every error.
type parser struct {
	file string
	errs []error
}

func (p *parser) errorf(n *yaml.Node, at, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s:%d:%d: %s: %s", p.file, n.Line, n.Column, at, fmt.Sprintf(format, args...)))
}

// fields calls f with the value of each key of the mapping n, refusing keys that are not
// in known and keys given twice. Null values are skipped: a null field is not set.
func (p *parser) fields(n *yaml.Node, at string, known []string, f func(key string, v *yaml.Node)) {
	n = deref(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, orTop(at), "want a mapping with %s, got %s", strings.Join(known, ", "), describe(n))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		key := k.Value
		kat := join(at, key)
		switch {
		case k.Kind != yaml.ScalarNode:
			p.errorf(k, orTop(at), "want a field name, got %s", describe(k))
			continue
		case !slices.Contains(known, key):
			p.errorf(k, kat, "unknown field (known fields: %s)", strings.Join(known, ", "))
			continue
		case seen[key] != 0:
			p.errorf(k, kat, "given twice (first at line %d)", seen[key])
			continue
		}
		seen[key] = k.Line
		if !isNull(v) {
			f(key, v)
		}
	}
}

// names calls f with each name and value of the mapping n, whose keys are names of what
// (tenants, personas) chosen by the file.
func (p *parser) names(n *yaml.Node, at, what string, f func(name, at string, v *yaml.Node)) {
	n = deref(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, at, "want a mapping of %s names, got %s", what, describe(n))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		name := k.Value
		if isNull(k) {
			name = "" // "~:" or "? :"
		}
		nat := at + "." + segment(name)
		switch {
		case k.Kind != yaml.ScalarNode:
			p.errorf(k, at, "want a %s name, got %s", what, describe(k))
			continue
		case name == "":
			p.errorf(k, nat, "empty %s name", what)
			continue
		case strings.TrimSpace(name) != name:
			p.errorf(k, nat, "%s name has leading or trailing spaces", what)
			continue
		case seen[name] != 0:
			p.errorf(k, nat, "%s given twice (first at line %d)", what, seen[name])
			continue
		}
		seen[name] = k.Line
		f(name, nat, v)
	}
}

// entry parses the settings of the defaults or of one tenant.
func (p *parser) entry(n *yaml.Node, at string) entry {
	var e entry
	p.fields(n, at, entryFields, func(key string, v *yaml.Node) {
		vat := at + "." + key
		switch key {
		case "system_prompt":
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!str" {
				p.errorf(v, vat, "want a string, got %s (quote it)", describe(v))
				return
			}
			e.systemPrompt = &v.Value
		case "budgets":
			p.fields(v, vat, budgetFields, func(key string, v *yaml.Node) {
				switch key {
				case "tokens_per_day":
					e.tokensPerDay = p.count(v, vat+"."+key)
				case "personas":
					e.personas = map[string]int64{}
					p.names(v, vat+"."+key, "persona", func(name, at string, v *yaml.Node) {
						if n := p.count(v, at); n != nil {
							e.personas[name] = *n
						}
					})
				}
			})
		case "rate_limits":
			p.fields(v, vat, rateLimitFields, func(key string, v *yaml.Node) {
				switch key {
				case "requests_per_minute":
					e.rpm = p.count(v, vat+"."+key)
				case "tokens_per_minute":
					e.tpm = p.count(v, vat+"."+key)
				}
			})
		case "routing":
			p.fields(v, vat, routingFields, func(key string, v *yaml.Node) {
				switch key {
				case "allow":
					e.allow = p.patterns(v, vat+"."+key)
				case "deny":
					e.deny = p.patterns(v, vat+"."+key)
				}
			})
		case "fail_open":
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" {
				p.errorf(v, vat, "want true or false, got %s", describe(v))
				return
			}
			var b bool
			if err := v.Decode(&b); err != nil {
				p.errorf(v, vat, "want true or false, got %s", describe(v))
				return
			}
			e.failOpen = &b
		}
	})
	return e
}

// count parses a budget or a limit: a whole number >= 0.
func (p *parser) count(n *yaml.Node, at string) *int64 {
	var v int64
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" && n.Decode(&v) == nil && v >= 0 {
		return &v
	}
	p.errorf(n, at, "want a whole number >= 0, got %s", describe(n))
	return nil
}

// patterns parses a list of model patterns.
func (p *parser) patterns(n *yaml.Node, at string) *[]string {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, at, "want a list of model patterns, got %s", describe(n))
		return nil
	}
	list := make([]string, 0, len(n.Content))
	for i, c := range n.Content {
		c = deref(c)
		cat := fmt.Sprintf("%s[%d]", at, i)
		switch {
		case c.Kind != yaml.ScalarNode || c.ShortTag() != "!!str":
			p.errorf(c, cat, "want a model pattern (a string), got %s", describe(c))
		case c.Value == "":
			p.errorf(c, cat, "empty model pattern")
		default:
			if _, err := path.Match(c.Value, ""); err != nil {
				p.errorf(c, cat, "invalid model pattern %q: %v (path.Match syntax: *, ?, [a-z], \\ escapes)", c.Value, err)
				continue
			}
			list = append(list, c.Value)
		}
	}
	return &list
}

// deref returns the node an alias (*name) stands for.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" || n.Kind == 0
}

// describe names a node's value for an error message.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch {
		case isNull(n):
			return "null"
		case n.ShortTag() == "!!str":
			return strconv.Quote(n.Value)
		}
		return n.Value
	}
	return "nothing"
}

// simpleName matches names that a field path shows unquoted.
var simpleName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// segment returns name as a segment of a field path, quoted unless it is simple.
func segment(name string) string {
	if simpleName.MatchString(name) {
		return name
	}
	return strconv.Quote(name)
}

func join(at, key string) string {
	if at == "" {
		return key
	}
	return at + "." + key
}

func orTop(at string) string {
	if at == "" {
		return "(top level)"
	}
	return at
}
