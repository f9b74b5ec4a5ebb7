// Package openfga is Agate's relationship-based authorization: OpenFGA's own engine, either
// in process (NewEmbedded: pkg/server on its memory datastore) or a remote OpenFGA server
// (NewRemote, through the official go-sdk), with the model of conf/authz.fga. Cached sits in
// front of either and keeps answering recent allows while the server is down.
//
// Tuples name OpenFGA objects as "type:id": user:alice, tenant:acme, tenant:acme#member,
// session:<uuid>, tool:<name>. The relations the gateway checks are viewer and writer on a
// session and can_use on a tool.
package openfga

//go:generate cp ../conf/authz.fga authz.fga

import (
	_ "embed"
	"fmt"
	"slices"

	openfgav1 "github.com/openfga/api/proto/openfga/v1"
	"github.com/openfga/language/pkg/go/transformer"

	"github.com/agate-gw/agate"
)

// modelDSL is conf/authz.fga. go:embed cannot reach outside the package directory, so the
// package holds a copy (go generate refreshes it) and TestEmbeddedModelIsConfModel checks
// that the two are identical.
//
//go:embed authz.fga
var modelDSL string

// maxTuplesPerWrite is what one OpenFGA write request may carry (the server's default
// limit). Write and Delete split longer lists into requests of this size.
const maxTuplesPerWrite = 100

// model returns the authorization model of conf/authz.fga.
func model() (*openfgav1.AuthorizationModel, error) {
	m, err := transformer.TransformDSLToProto(modelDSL)
	if err != nil {
		return nil, fmt.Errorf("openfga model conf/authz.fga: %w", err)
	}
	return m, nil
}

// validate returns an EInvalid error if a field of t is empty.
func validate(t agate.Tuple) error {
	if t.User == "" || t.Relation == "" || t.Object == "" {
		return agate.Errorf(agate.EInvalid, "authorization tuple %s#%s@%s has an empty field", t.Object, t.Relation, t.User)
	}
	return nil
}

// batches validates tuples, drops repeats (OpenFGA refuses a request that names a tuple
// twice) and splits the rest into requests of at most maxTuplesPerWrite.
func batches(tuples []agate.Tuple) ([][]agate.Tuple, error) {
	seen := make(map[agate.Tuple]bool, len(tuples))
	uniq := make([]agate.Tuple, 0, len(tuples))
	for _, t := range tuples {
		if err := validate(t); err != nil {
			return nil, err
		}
		if !seen[t] {
			seen[t] = true
			uniq = append(uniq, t)
		}
	}
	return slices.Collect(slices.Chunk(uniq, maxTuplesPerWrite)), nil
}
