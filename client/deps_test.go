package client

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The client talks to ewfd only through the wire format: it must not
// import the server (or anything that would pull it in). Only the external
// test package (client_test), which runs the client against the real
// server, may import it.
func TestDependencies(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	forbidden := []string{
		"github.com/ewf-project/ewf/server",
		"github.com/ewf-project/ewf/store",
		"github.com/ewf-project/ewf/cmd",
		"github.com/ewf-project/ewf/punch",
	}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		if f.Name.Name == "client_test" {
			continue
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if path == "github.com/ewf-project/ewf" {
				t.Errorf("%s imports the root package %s", name, path)
			}
			for _, bad := range forbidden {
				if path == bad || strings.HasPrefix(path, bad+"/") {
					t.Errorf("%s imports %s", name, path)
				}
			}
		}
	}
}
