package wire_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// allowedImports is what package wire may import (STYLE.md, layout table:
// wire keeps out sockets, time and logging). A new import is a design
// change: add it here in the same commit, with the reason.
var allowedImports = []string{
	"bufio",           // Framer
	"encoding/binary", // the codec
	"encoding/hex",    // ID text form
	"errors",          // sentinel errors
	"io",              // Framer
	"net/netip",       // addresses
}

// TestDeps fails when a non-test file of package wire imports anything
// outside allowedImports. It reads every file, whatever its build tags,
// so a file for another platform cannot slip an import in.
func TestDeps(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		if f.Name.Name != "wire" {
			t.Errorf("%s: package %s in wire/", name, f.Name.Name)
		}
		seen++
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if !slices.Contains(allowedImports, path) {
				t.Errorf("%s imports %q, outside wire's allowed set %v", name, path, allowedImports)
			}
		}
	}
	if seen == 0 {
		t.Fatal("no source files found: test run from the wrong directory?")
	}
}
