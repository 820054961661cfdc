package ewf_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// TestLayout keeps the architecture that the folder names promise
// (STYLE.md, "Layout"): each row names what a package's non-test files
// must not import from this module. Packages also guard their standard
// library imports in their own deps tests.
func TestLayout(t *testing.T) {
	const mod = "github.com/ewf-project/ewf"
	forbidden := map[string][]string{
		mod + "/wire":   {mod + "/"}, // the wire format stands on nothing of ours
		mod + "/punch":  {mod + "/server", mod + "/client", mod + "/store", mod + "/internal"},
		mod + "/client": {mod + "/server", mod + "/store", mod + "/punch", mod + "/internal"},
		mod + "/store":  {mod + "/"},
		// pion's logs go through internal/pionlog; the rest of internal is test machinery and the server's I/O
		mod + "/relayclient": {mod + "/server", mod + "/store", mod + "/punch", mod + "/client", mod + "/internal/natlab", mod + "/internal/loadgen", mod + "/internal/redistest", mod + "/internal/udpio"},
		// the classifier owns no socket and knows no server or client
		mod + "/natdisco": {mod + "/server", mod + "/client", mod + "/punch", mod + "/store", mod + "/internal"},
		// the multiplexer stands on nothing of ours
		mod + "/streammux": {mod + "/"},
		// forwarding stands on the public API only
		mod + "/forward": {mod + "/server", mod + "/client", mod + "/punch", mod + "/store", mod + "/internal", mod + "/relayclient"},
		mod + "/server":  {mod + "/client", mod + "/punch", mod + "/internal/natlab", mod + "/internal/loadgen"},
		mod:              {mod + "/server", mod + "/store", mod + "/internal"}, // the public API holds no server
	}
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		for pkg, bad := range forbidden {
			if p.ImportPath != pkg && !strings.HasPrefix(p.ImportPath, pkg+"/") || pkg == mod && p.ImportPath != mod {
				continue
			}
			seen++
			for _, imp := range p.Imports {
				for _, b := range bad {
					if (imp == strings.TrimSuffix(b, "/") || strings.HasPrefix(imp, b)) && !strings.HasPrefix(imp, pkg) {
						t.Errorf("%s imports %s, which its layer keeps out", p.ImportPath, imp)
					}
				}
			}
		}
	}
	if seen < len(forbidden) {
		t.Fatalf("go list found only %d of the %d guarded packages", seen, len(forbidden))
	}
}
