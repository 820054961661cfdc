package store

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The store keeps registrations and nothing else: no network, no global
// logger, and no other ewf package, so that a second backend can be written
// against this package alone and the server cannot leak into it.
func TestDependencies(t *testing.T) {
	forbidden := []string{
		"net",
		"log", // a *slog.Logger comes in through options; log/slog is fine
		"github.com/ewf-project/ewf/wire",
		"github.com/ewf-project/ewf/server",
		"github.com/ewf-project/ewf/client",
		"github.com/ewf-project/ewf/punch",
		"github.com/ewf-project/ewf/cmd",
		"github.com/ewf-project/ewf/internal",
	}
	fset := token.NewFileSet()
	for _, dir := range []string{".", "bolt", "redis"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue // tests may exec children and print
			}
			f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range f.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				if path == "github.com/ewf-project/ewf" {
					t.Errorf("%s imports the root package", name)
				}
				for _, bad := range forbidden {
					if path == bad || strings.HasPrefix(path, bad+"/") && path != "log/slog" {
						t.Errorf("%s imports %s", name, path)
					}
				}
			}
		}
	}
}
