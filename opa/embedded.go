package opa

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/agate-gw/agate"
	"github.com/agate-gw/agate/internal/watch"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
)

// debounce is how long Run waits after the last change in the directory before it
// reloads: an editor's or a deploy's burst of writes makes one reload.
const debounce = 100 * time.Millisecond

// Embedded evaluates the policies of a directory in process. Every .rego file directly in
// the directory, except tests (*_test.rego) and hidden files, is compiled (Rego v1) into
// one prepared query for data.agate.decision: once by NewEmbedded and again by Run
// whenever the files change. A change that does not compile is logged and the last good
// policies stay in force.
type Embedded struct {
	dir     string
	log     *slog.Logger
	current atomic.Pointer[policies]
}

// policies is one compiled version of the directory.
type policies struct {
	query rego.PreparedEvalQuery
	sum   [sha256.Size]byte // of the files' names and contents, to skip reloads that change nothing
	files []string
}

var _ Decider = (*Embedded)(nil)

// NewEmbedded compiles the policies of dir. It returns an error naming the file and the
// problem when they do not parse or compile, and when they do not define
// data.agate.decision.
func NewEmbedded(ctx context.Context, dir string, log *slog.Logger) (*Embedded, error) {
	p, err := compile(ctx, os.DirFS(dir), dir)
	if err != nil {
		return nil, fmt.Errorf("opa: policies in %s: %w", dir, err)
	}
	e := &Embedded{dir: dir, log: log}
	e.current.Store(p)
	log.Info("policies loaded", "dir", dir, "files", p.files)
	return e, nil
}

// NewEmbeddedFS compiles the policies at the root of fsys (name labels them in errors and
// logs), such as those built into the binary. Its Run only waits: they cannot change.
func NewEmbeddedFS(ctx context.Context, fsys fs.FS, name string, log *slog.Logger) (*Embedded, error) {
	p, err := compile(ctx, fsys, name)
	if err != nil {
		return nil, fmt.Errorf("opa: policies in %s: %w", name, err)
	}
	e := &Embedded{log: log}
	e.current.Store(p)
	log.Info("policies loaded", "from", name, "files", p.files)
	return e, nil
}

// Decide evaluates data.agate.decision for in with the policies in force. It keeps the
// Decider contract: a nil error and the policy's answer, or an error and a denial.
// Errors are agate.EInternal (the input cannot be converted, the policy fails to evaluate,
// is undefined for the input, or answers without a boolean allow), or wrap ctx.Err() when
// ctx ends during the evaluation. Decide never compiles; it is safe for concurrent use,
// also while Run reloads.
func (e *Embedded) Decide(ctx context.Context, in agate.PolicyInput) (agate.PolicyDecision, error) {
	input, err := inputValue(in)
	if err != nil {
		return agate.PolicyDecision{}, agate.Wrap(agate.EInternal, fmt.Errorf("opa: input: %w", err),
			"The policy input cannot be built.")
	}
	rs, err := e.current.Load().query.Eval(ctx, rego.EvalParsedInput(input))
	switch {
	case err != nil && ctx.Err() != nil:
		return agate.PolicyDecision{}, fmt.Errorf("opa: evaluate %s: %w", query, ctx.Err())
	case err != nil:
		return agate.PolicyDecision{}, agate.Wrap(agate.EInternal, fmt.Errorf("opa: evaluate %s: %w", query, err),
			"The policy could not be evaluated.")
	case len(rs) == 0 || len(rs[0].Expressions) == 0:
		return agate.PolicyDecision{}, undefined()
	}
	return decision(rs[0].Expressions[0].Value)
}

// Run watches the directory and reloads the policies after each change (debounced), until
// ctx ends; then it returns nil. A reload that fails is logged as an error and changes
// nothing. Run returns an error only when it cannot watch the directory. Call it once.
// A directory that is removed (rather than its files) is no longer watched, and its last
// policies stay in force.
func (e *Embedded) Run(ctx context.Context) error {
	if e.dir == "" {
		<-ctx.Done() // built in: nothing to watch
		return nil
	}
	if err := watch.Dirs(ctx, e.dir, nil, debounce, e.log, func() { e.reload(ctx) }); err != nil {
		return fmt.Errorf("opa: %w", err)
	}
	return nil
}

// reload compiles the directory and swaps in the result if it compiles and differs from
// the policies in force.
func (e *Embedded) reload(ctx context.Context) {
	p, err := compile(ctx, os.DirFS(e.dir), e.dir)
	switch {
	case err != nil && ctx.Err() != nil:
		return
	case err != nil:
		e.log.Error("policy reload failed; the last good policies stay in force", "dir", e.dir, "err", err)
		return
	case p.sum == e.current.Load().sum:
		return
	}
	e.current.Store(p)
	e.log.Info("policies reloaded", "dir", e.dir, "files", p.files)
}

// compile reads, parses and compiles the policy files at the root of fsys (dir names it).
func compile(ctx context.Context, fsys fs.FS, dir string) (*policies, error) {
	entries, err := fs.ReadDir(fsys, ".") // sorted by name
	if err != nil {
		return nil, err
	}
	p := &policies{}
	h := sha256.New()
	modules := map[string]*ast.Module{}
	for _, entry := range entries {
		name := entry.Name()
		if !strings.HasSuffix(name, ".rego") || strings.HasSuffix(name, "_test.rego") ||
			strings.HasPrefix(name, ".") || entry.IsDir() {
			continue
		}
		path := filepath.Join(dir, name)
		src, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		m, err := ast.ParseModuleWithOpts(path, string(src), ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			return nil, err // names the file and line: "policy/x.rego:3: rego_parse_error: …"
		}
		modules[path] = m
		p.files = append(p.files, name)
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(src))
		h.Write(src)
	}
	if len(modules) == 0 {
		return nil, errors.New("no .rego files")
	}
	h.Sum(p.sum[:0])

	c := ast.NewCompiler().WithDefaultRegoVersion(ast.RegoV1)
	if c.Compile(modules); c.Failed() {
		return nil, c.Errors // each names its file and line
	}
	if len(c.GetRulesExact(ast.MustParseRef(query))) == 0 {
		return nil, fmt.Errorf("no rule defines %s (files: %s)", query, strings.Join(p.files, ", "))
	}
	p.query, err = rego.New(rego.Query(query), rego.Compiler(c)).PrepareForEval(ctx)
	if err != nil {
		return nil, err
	}
	return p, nil
}
