package wire_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// TestWriteSeedCorpus regenerates the golden part of the committed fuzz
// corpus (testdata/fuzz/<target>/golden-*) from the golden vectors. It runs
// only when asked:
//
//	EWF_WRITE_CORPUS=1 go test -run TestWriteSeedCorpus ./wire
//
// The other corpus files are inputs the fuzzers found interesting, copied
// from the fuzz cache ($(go env GOCACHE)/fuzz/...) after a run.
func TestWriteSeedCorpus(t *testing.T) {
	if os.Getenv("EWF_WRITE_CORPUS") == "" {
		t.Skip("set EWF_WRITE_CORPUS=1 to rewrite testdata/fuzz/*/golden-*")
	}
	all, _ := stream(t)
	for _, target := range []string{"FuzzDecode", "FuzzClassify", "FuzzFramer"} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		write := func(name string, b []byte) {
			data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, "golden-"+name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for _, g := range goldens {
			write(g.name, unhex(t, g.hex))
		}
		write("stun-binding-fingerprint", unhex(t, "00010008"+"2112a442"+txHex+"80280004"+"fdf6ae02"))
		if target == "FuzzFramer" {
			write("stream-all-goldens", all)
		}
	}
	// FuzzIntegrity takes a message and a key: the golden messages that
	// carry a MAC, with the KEY that made it.
	dir := filepath.Join("testdata", "fuzz", "FuzzIntegrity")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, g := range goldens {
		if !g.want.Has(wire.AttrMAC) || g.want.Type.Method == wire.MethodPunch {
			continue
		}
		data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n[]byte(%q)\n", unhex(t, g.hex), testKey[:])
		if err := os.WriteFile(filepath.Join(dir, "golden-"+g.name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
