// Package tools holds the built-in tool catalogue: one JSON file per tool in schema/, in the
// format that tool.Load reads. A deployment may replace it with a directory of its own.
package tools

import (
	"embed"
	"io/fs"
)

// Schema holds the catalogue files under "schema/".
//
//go:embed schema/*.json
var Schema embed.FS

// Catalogue returns the built-in catalogue with its files at the root, ready for tool.Load.
func Catalogue() fs.FS {
	sub, err := fs.Sub(Schema, "schema")
	if err != nil {
		// fs.Sub fails only on an invalid path; "schema" is a valid one.
		panic(err)
	}
	return sub
}
