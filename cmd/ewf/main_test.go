package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
)

// buildEWF builds this command once per test into a temp dir.
func buildEWF(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ewf")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func startServer(t *testing.T) string {
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d.Addrs()[0].String()
}

// statusLine reads stderr lines until one starts with event, and returns
// its key=value fields.
func statusLine(t *testing.T, sc *bufio.Scanner, event string) map[string]string {
	t.Helper()
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, event+" ") {
			continue
		}
		kv := map[string]string{}
		for _, f := range strings.Fields(line)[1:] {
			k, v, _ := strings.Cut(f, "=")
			if k == "msg" { // quoted, with spaces, and always last
				_, kv[k], _ = strings.Cut(line, " msg=")
				break
			}
			kv[k] = v
		}
		return kv
	}
	t.Fatalf("no %q line on stderr", event)
	return nil
}

// TestListenConnect runs the two CLI sides as real processes and pipes
// 256 KiB each way through them, for both transports.
func TestListenConnect(t *testing.T) {
	bin := buildEWF(t)
	srv := startServer(t)
	for _, tr := range []string{"udp", "tcp"} {
		t.Run(tr, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			dir := t.TempDir()
			inL, inC := make([]byte, 256<<10), make([]byte, 256<<10)
			rand.Read(inL)
			rand.Read(inC)

			listen := exec.CommandContext(ctx, bin, "listen", "--server", srv, "--identity", filepath.Join(dir, "l.json"),
				"--status-dir", dir)
			listen.Stdin = bytes.NewReader(inL)
			var outL bytes.Buffer
			listen.Stdout = &outL
			lerr, _ := listen.StderrPipe()
			if err := listen.Start(); err != nil {
				t.Fatal(err)
			}
			lsc := bufio.NewScanner(lerr)
			ready := statusLine(t, lsc, "ready")
			if len(ready["id"]) != 32 || ready["public"] == "" {
				t.Fatalf("ready line fields: %v", ready)
			}

			connect := exec.CommandContext(ctx, bin, "connect", "--server", srv, "--identity", filepath.Join(dir, "c.json"),
				"--transport", tr, ready["id"])
			connect.Stdin = bytes.NewReader(inC)
			var outC bytes.Buffer
			connect.Stdout = &outC
			cerr, _ := connect.StderrPipe()
			if err := connect.Start(); err != nil {
				t.Fatal(err)
			}
			csc := bufio.NewScanner(cerr)
			got := statusLine(t, csc, "connected")
			if got["peer"] != ready["id"] || got["transport"] != tr || got["path"] != "direct" || got["remote"] == "" || got["rtt_ms"] == "" || got["auth"] != "key" {
				t.Errorf("connected line: %v", got)
			}
			if lc := statusLine(t, lsc, "connected"); lc["transport"] != tr || lc["auth"] != "key" {
				t.Errorf("listener's connected line: %v", lc)
			}
			go io.Copy(io.Discard, lerr)
			go io.Copy(io.Discard, cerr)
			if err := connect.Wait(); err != nil {
				t.Errorf("connect exited: %v", err)
			}
			if err := listen.Wait(); err != nil {
				t.Errorf("listen exited: %v", err)
			}
			if sum(outL.Bytes()) != sum(inC) {
				t.Errorf("listener got %d bytes, checksum mismatch", outL.Len())
			}
			if sum(outC.Bytes()) != sum(inL) {
				t.Errorf("connector got %d bytes, checksum mismatch", outC.Len())
			}
		})
	}
}

func sum(p []byte) string { s := sha256.Sum256(p); return hex.EncodeToString(s[:]) }

// TestErrorLines checks the error status line and exit code of failures.
func TestErrorLines(t *testing.T) {
	bin := buildEWF(t)
	srv := startServer(t)
	dir := t.TempDir()
	cases := []struct {
		name   string
		args   []string
		reason string
		code   int
	}{
		{"unknown peer", []string{"connect", "--server", srv, "--identity", filepath.Join(dir, "a.json"), strings.Repeat("ab", 16)}, "unknown-peer", 1},
		{"bad peer ID", []string{"connect", "--server", srv, "nothex"}, "usage", 2},
		{"no server", []string{"stun"}, "usage", 2},
		{"unknown command", []string{"frobnicate"}, "usage", 2},
		{"no UDP wait", []string{"listen", "--server", srv, "--udp-wait", "0s"}, "usage", 2},
		{"corrupt identity", []string{"id", "--identity", writeFile(t, dir, "bad.json", "garbage")}, "identity", 1},
		{"legacy ID with the key-bound marker", []string{"connect", "--server", srv, "--identity",
			writeFile(t, dir, "marked.json", `{"version": 1, "id": "ef01`+strings.Repeat("ab", 14)+`", "keys": {}}`), strings.Repeat("ab", 16)}, "identity", 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(bin, c.args...)
			cmd.Env = append(os.Environ(), "EWF_SERVER=")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			if code != c.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, c.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), "error reason="+c.reason+" msg=\"") {
				t.Errorf("stderr lacks reason=%s:\n%s", c.reason, stderr.String())
			}
		})
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestIDStable: ewf id creates the identity once and prints the same ID
// after.
func TestIDStable(t *testing.T) {
	bin := buildEWF(t)
	path := filepath.Join(t.TempDir(), "id.json")
	first, err := exec.Command(bin, "id", "--identity", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	second, err := exec.Command(bin, "id", "--identity", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	if len(strings.TrimSpace(string(first))) != 32 || string(first) != string(second) {
		t.Errorf("ids %q then %q", first, second)
	}
	if !strings.HasPrefix(string(first), "ef01") {
		t.Errorf("new ID %q is not key-bound", first)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("identity file mode: %v %v", fi.Mode(), err)
	}
}

// TestIDUpgrade: a version 1 identity keeps its ID under "ewf id", and
// "ewf id --upgrade" replaces it in place with a key-bound one, once.
func TestIDUpgrade(t *testing.T) {
	bin := buildEWF(t)
	const legacy = "0123456789abcdef0123456789abcdef"
	path := writeFile(t, t.TempDir(), "id.json", `{"version": 1, "id": "`+legacy+`", "keys": {"s:1": "`+legacy+`"}}`)
	out, err := exec.Command(bin, "id", "--identity", path).Output()
	if err != nil || strings.TrimSpace(string(out)) != legacy {
		t.Fatalf("ewf id on a version 1 file: %q, %v", out, err)
	}
	cmd := exec.Command(bin, "id", "--identity", path, "--upgrade")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("upgrade: %v\n%s", err, stderr.String())
	}
	id := strings.TrimSpace(string(out))
	up := statusLine(t, bufio.NewScanner(&stderr), "upgraded")
	if !strings.HasPrefix(id, "ef01") || up["previous"] != legacy || up["id"] != id || up["auth"] != "key" {
		t.Errorf("upgraded to %q; status %v", id, up)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("identity file mode after upgrade: %v", err)
	}
	// Upgrading again changes nothing.
	again, err := exec.Command(bin, "id", "--identity", path, "--upgrade").Output()
	if err != nil || strings.TrimSpace(string(again)) != id {
		t.Errorf("second upgrade: %q, %v", again, err)
	}
}

// TestListenAllow: "ewf listen --allow" refuses a peer that is not listed
// (the connector ends with reason=peer-auth, the listener prints a
// "refused" line and keeps waiting), and a bad allow file is a clear
// error naming its line.
func TestListenAllow(t *testing.T) {
	bin := buildEWF(t)
	srv := startServer(t)
	dir := t.TempDir()
	for _, tr := range []string{"udp", "tcp"} {
		t.Run(tr, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			allow := writeFile(t, dir, "allow", "# only this one\n"+strings.Repeat("ab", 16)+"\n")
			listen := exec.CommandContext(ctx, bin, "listen", "--server", srv, "--identity", filepath.Join(dir, "l-"+tr+".json"),
				"--allow", allow, "--timeout", "20s")
			lerr, _ := listen.StderrPipe()
			if err := listen.Start(); err != nil {
				t.Fatal(err)
			}
			defer listen.Process.Kill()
			lsc := bufio.NewScanner(lerr)
			// The one ID on the list is a legacy one: the listener says
			// what that means.
			if w := statusLine(t, lsc, "warning"); !strings.Contains(w["msg"], "1 of the 1 IDs") {
				t.Errorf("warning line %v", w)
			}
			ready := statusLine(t, lsc, "ready")

			connect := exec.CommandContext(ctx, bin, "connect", "--server", srv, "--identity", filepath.Join(dir, "c-"+tr+".json"),
				"--transport", tr, ready["id"])
			var cerr bytes.Buffer
			connect.Stderr = &cerr
			err := connect.Run()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(cerr.String(), "error reason=peer-auth ") {
				t.Errorf("connect: %v\n%s", err, cerr.String())
			}
			if strings.Contains(cerr.String(), "connected ") {
				t.Errorf("the refused connector printed a connected line:\n%s", cerr.String())
			}
			cready := statusLine(t, bufio.NewScanner(strings.NewReader(cerr.String())), "ready")
			if got := statusLine(t, lsc, "refused"); got["peer"] != cready["id"] || got["reason"] != "peer-auth" {
				t.Errorf("refused line %v, connector %s", got, cready["id"])
			}
			listen.Process.Kill()
			listen.Wait()
		})
	}
	t.Run("bad file", func(t *testing.T) {
		bad := writeFile(t, dir, "bad", strings.Repeat("ab", 16)+"\nnot-an-id\n")
		cmd := exec.Command(bin, "listen", "--server", srv, "--identity", filepath.Join(dir, "x.json"), "--allow", bad)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 ||
			!strings.Contains(stderr.String(), "error reason=usage ") || !strings.Contains(stderr.String(), "line 2") {
			t.Errorf("bad allow file: %v\n%s", err, stderr.String())
		}
	})
}
