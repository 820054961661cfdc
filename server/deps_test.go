package server

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// coreFiles are the protocol core: request bytes in, response bytes out.
// They must not touch sockets, flags, signals or the concrete store.
var coreFiles = []string{
	"server.go", "bindings.go", "limiter.go", "txcache.go", "stun.go", "metrics.go", "config.go", "relaycreds.go",
}

// TestDependencies keeps the picture of docs/STYLE.md true: the core owns
// no sockets, and nothing in the package reads flags or handles signals.
func TestDependencies(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		core := false
		for _, c := range coreFiles {
			core = core || c == f
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			switch {
			case p == "flag" || p == "os/signal":
				t.Errorf("%s imports %s: flags and signals belong to cmd/ewfd", f, p)
			case core && (p == "net" || p == "syscall" || p == "golang.org/x/sys/unix" ||
				strings.HasPrefix(p, "github.com/ewf-project/ewf/internal/udpio") ||
				strings.HasPrefix(p, "github.com/ewf-project/ewf/store/")):
				t.Errorf("core file %s imports %s: the core owns no sockets and sees only store.Store", f, p)
			case strings.HasPrefix(p, "github.com/ewf-project/ewf/client") || strings.HasPrefix(p, "github.com/ewf-project/ewf/punch"):
				t.Errorf("%s imports %s: the server does not depend on the client side", f, p)
			}
		}
	}
}
