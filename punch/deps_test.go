package punch

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestDeps keeps the package what STYLE.md says it is: a state machine
// with no sockets, no goroutine machinery and no logging. It fails when a
// non-test file imports anything outside this list.
func TestDeps(t *testing.T) {
	allowed := map[string]bool{
		"crypto/hmac": true, "crypto/rand": true, "crypto/sha256": true,
		"encoding/binary": true, "errors": true, "fmt": true, "hash": true,
		"io": true, "net/netip": true, "time": true,
		// A PCG seeded from Config.Rand picks the birthday spray's ports:
		// deterministic in tests, no global state.
		"math/rand/v2":                    true,
		"github.com/ewf-project/ewf/wire": true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
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
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if !allowed[path] {
				t.Errorf("%s imports %q, which package punch keeps out (STYLE.md)", name, path)
			}
		}
	}
}
