package httpapi

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// httpMethods are the keys of an OpenAPI path item that name operations.
var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// loadOpenAPI parses the embedded openapi.json (the bytes /openapi.json serves).
func loadOpenAPI(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(openapiDoc, &doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	return doc
}

// object returns v[key] as a JSON object, failing the test if it is not one.
func object(t *testing.T, v any, where string) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s is %T, not an object", where, v)
	}
	return m
}

// pointer resolves a local JSON pointer ("#/components/schemas/Event") in doc.
func pointer(doc map[string]any, ref string) (any, bool) {
	rest, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, false
	}
	var cur any = doc
	for tok := range strings.SplitSeq(rest, "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[tok]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// walkRefs calls f with the location and target of every "$ref" in v.
func walkRefs(v any, at string, f func(at, ref string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if s, ok := e.(string); ok && k == "$ref" {
				f(at, s)
				continue
			}
			walkRefs(e, at+"/"+k, f)
		}
	case []any:
		for i, e := range v {
			walkRefs(e, at+"/"+strconv.Itoa(i), f)
		}
	}
}

// deref follows v's $ref, if it has one.
func deref(t *testing.T, doc map[string]any, v any) map[string]any {
	t.Helper()
	m := object(t, v, "a parameter")
	if ref, ok := m["$ref"].(string); ok {
		target, ok := pointer(doc, ref)
		if !ok {
			t.Fatalf("$ref %s does not resolve", ref)
		}
		return object(t, target, ref)
	}
	return m
}

func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	doc := loadOpenAPI(t)
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.") {
		t.Fatalf("openapi = %q, want 3.x", doc["openapi"])
	}

	routeAuth := map[string]bool{}
	for _, rt := range (&Server{}).routes() {
		key := rt.method + " " + rt.pattern
		if _, dup := routeAuth[key]; dup {
			t.Errorf("routes() has %s twice", key)
		}
		routeAuth[key] = rt.flags&private != 0
	}

	documented := map[string]bool{}
	operationIDs := map[string]string{}
	pathParam := regexp.MustCompile(`\{([^}]+)\}`)
	for path, item := range object(t, doc["paths"], "paths") {
		for _, m := range httpMethods {
			opv, ok := object(t, item, path)[m]
			if !ok {
				continue
			}
			key := strings.ToUpper(m) + " " + path
			op := object(t, opv, key)
			documented[key] = true

			id, _ := op["operationId"].(string)
			if id == "" {
				t.Errorf("%s has no operationId", key)
			} else if other, dup := operationIDs[id]; dup {
				t.Errorf("operationId %q is used by %s and %s", id, other, key)
			} else {
				operationIDs[id] = key
			}
			if resp, _ := op["responses"].(map[string]any); len(resp) == 0 {
				t.Errorf("%s documents no responses", key)
			}
			if auth, ok := routeAuth[key]; ok {
				if got, _ := op["x-agate-authenticated"].(bool); got != auth {
					t.Errorf("%s: x-agate-authenticated = %v, routes() says auth = %v", key, op["x-agate-authenticated"], auth)
				}
			}

			// Every {name} of the path template is a documented, required path parameter.
			params := map[string]bool{}
			for _, p := range asSlice(op["parameters"]) {
				pm := deref(t, doc, p)
				if pm["in"] == "path" {
					if pm["required"] != true {
						t.Errorf("%s: path parameter %v is not required", key, pm["name"])
					}
					params[pm["name"].(string)] = true
				}
			}
			for _, sub := range pathParam.FindAllStringSubmatch(path, -1) {
				if !params[sub[1]] {
					t.Errorf("%s: path parameter {%s} is not documented", key, sub[1])
				}
				delete(params, sub[1])
			}
			for name := range params {
				t.Errorf("%s documents path parameter %q that the path has not", key, name)
			}
		}
	}

	for key := range routeAuth {
		if !documented[key] {
			t.Errorf("route %s is not in openapi.json", key)
		}
	}
	for key := range documented {
		if _, ok := routeAuth[key]; !ok {
			t.Errorf("openapi.json documents %s, which routes() does not have", key)
		}
	}

	refs := 0
	walkRefs(doc, "#", func(at, ref string) {
		refs++
		if !strings.HasPrefix(ref, "#/components/") {
			t.Errorf("%s: $ref %q does not point into components", at, ref)
			return
		}
		if _, ok := pointer(doc, ref); !ok {
			t.Errorf("%s: $ref %q does not resolve", at, ref)
		}
	})
	if refs == 0 {
		t.Error("openapi.json has no $ref at all; the walk is broken")
	}
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

func TestOpenAPIIsServed(t *testing.T) {
	rec := httptest.NewRecorder()
	(&Server{}).handleOpenAPI().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.json", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" || string(body) != string(openapiDoc) {
		t.Fatalf("GET /openapi.json answered %d %q with %d bytes", rec.Code, rec.Header().Get("Content-Type"), len(body))
	}
}

// constStrings returns the string constants declared in the Go file at path for which keep,
// given the constant's name and declared type name, is true.
func constStrings(t *testing.T, path string, keep func(name, typ string) bool) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		typ := ""
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			if vs.Type != nil {
				typ = ""
				if id, ok := vs.Type.(*ast.Ident); ok {
					typ = id.Name
				}
			} else if len(vs.Values) > 0 {
				typ = "" // an untyped constant
			} // else: repeats the previous spec's type and values
			for i, name := range vs.Names {
				if !keep(name.Name, typ) {
					continue
				}
				if i >= len(vs.Values) {
					t.Fatalf("%s: constant %s has no literal value; extend this test", path, name.Name)
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Fatalf("%s: constant %s is not a string literal; extend this test", path, name.Name)
				}
				s, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				out[name.Name] = s
			}
		}
	}
	return out
}

// enum returns the string enum at ref in doc.
func enum(t *testing.T, doc map[string]any, ref string) []string {
	t.Helper()
	v, ok := pointer(doc, ref)
	if !ok {
		t.Fatalf("openapi.json has no %s", ref)
	}
	var out []string
	for _, e := range asSlice(object(t, v, ref)["enum"]) {
		s, ok := e.(string)
		if !ok {
			t.Fatalf("%s has a non-string value %v", ref, e)
		}
		if slices.Contains(out, s) {
			t.Errorf("%s lists %q twice", ref, s)
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		t.Fatalf("%s has no enum", ref)
	}
	return out
}

// sameSet reports the differences between the documented values and the declared constants.
func sameSet(t *testing.T, what string, documented []string, declared map[string]string) {
	t.Helper()
	if len(declared) == 0 {
		t.Fatalf("found no constants for %s; the parsing is broken", what)
	}
	values := map[string]bool{}
	for name, v := range declared {
		values[v] = true
		if !slices.Contains(documented, v) {
			t.Errorf("%s: %s = %q is not documented in openapi.json", what, name, v)
		}
	}
	for _, v := range documented {
		if !values[v] {
			t.Errorf("%s: openapi.json documents %q, which is not a constant", what, v)
		}
	}
}

func TestOpenAPIErrorCodesMatchAgate(t *testing.T) {
	doc := loadOpenAPI(t)
	codes := constStrings(t, "../errors.go", func(_, typ string) bool { return typ == "Code" })
	sameSet(t, "Error.code", enum(t, doc, "#/components/schemas/Error/properties/code"), codes)
}

func TestOpenAPIEventEnumsMatchAgate(t *testing.T) {
	doc := loadOpenAPI(t)
	types := constStrings(t, "../agate.go", func(name, _ string) bool {
		return strings.HasPrefix(name, "Type")
	})
	sameSet(t, "Event.type", enum(t, doc, "#/components/schemas/Event/properties/type"), types)
	roles := constStrings(t, "../agate.go", func(name, _ string) bool {
		return strings.HasPrefix(name, "Role")
	})
	sameSet(t, "Event.role", enum(t, doc, "#/components/schemas/Event/properties/role"), roles)

	version := constStrings(t, "../agate.go", func(name, _ string) bool { return name == "Version" })
	v, _ := pointer(doc, "#/components/schemas/Event/properties/version/const")
	if v != version["Version"] {
		t.Errorf("Event.version const = %v, agate.Version = %q", v, version["Version"])
	}
}

func TestOpenAPIWebSocketCloseCodes(t *testing.T) {
	doc := loadOpenAPI(t)
	v, ok := pointer(doc, "#/paths/~1v1~1session~1{id}~1stream/get/x-websocket/closeCodes")
	if !ok {
		t.Fatal("the WebSocket route has no x-websocket.closeCodes")
	}
	documented := object(t, v, "closeCodes")
	for _, code := range []websocket.StatusCode{
		closeBadFrame, closeUnauthenticated, closeForbidden, closeUnknownSession,
		websocket.StatusNormalClosure, websocket.StatusGoingAway, websocket.StatusMessageTooBig,
		websocket.StatusInternalError, websocket.StatusTryAgainLater,
	} {
		key := strconv.Itoa(int(code))
		if _, ok := documented[key]; !ok {
			t.Errorf("close code %s (%v) is not documented", key, code)
		}
		op, _ := pointer(doc, "#/paths/~1v1~1session~1{id}~1stream/get/description")
		if s, _ := op.(string); !strings.Contains(s, key) {
			t.Errorf("close code %s is not in the WebSocket route's description", key)
		}
	}
}
