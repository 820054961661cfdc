package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestListenReportsPeers runs a listener and two connectors as processes:
// the listener reports the first peer ("accepted … path=direct"), `ewf
// status` shows its bindings and that connection from the status file, a
// second peer that comes while stdin/stdout is taken is refused as busy,
// and when the listener ends, its status file goes with it.
func TestListenReportsPeers(t *testing.T) {
	bin := buildEWF(t)
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	statusDir := filepath.Join(dir, "state")

	listen := exec.CommandContext(ctx, bin, "listen", "--server", srv, "--identity", filepath.Join(dir, "l.json"),
		"--status-dir", statusDir)
	lin, _ := listen.StdinPipe() // held open: the first peer keeps the pipe
	lerr, _ := listen.StderrPipe()
	if err := listen.Start(); err != nil {
		t.Fatal(err)
	}
	lsc := bufio.NewScanner(lerr)
	ready := statusLine(t, lsc, "ready")

	connect := func(name string) (*exec.Cmd, io.WriteCloser, map[string]string) {
		c := exec.CommandContext(ctx, bin, "connect", "--server", srv, "--identity", filepath.Join(dir, name+".json"), ready["id"])
		in, _ := c.StdinPipe()
		cerr, _ := c.StderrPipe()
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		csc := bufio.NewScanner(cerr)
		statusLine(t, csc, "ready")
		got := statusLine(t, csc, "connected")
		go io.Copy(io.Discard, cerr)
		return c, in, got
	}
	c1, in1, _ := connect("c1")
	acc := statusLine(t, lsc, "accepted")
	id1 := readID(t, bin, filepath.Join(dir, "c1.json"))
	if acc["peer"] != id1 || acc["transport"] != "udp" || acc["path"] != "direct" || acc["remote"] == "" {
		t.Errorf("accepted line: %v (first peer %s)", acc, id1)
	}

	out, err := exec.CommandContext(ctx, bin, "status", "--status-dir", statusDir).Output()
	if err != nil {
		t.Fatalf("ewf status: %v", err)
	}
	for _, want := range []string{
		"listener pid=", "id=" + ready["id"], "server=" + srv,
		"binding pid=", "transport=udp public=" + ready["public"], "transport=tcp public=",
		"conn pid=", "peer=" + id1 + " transport=udp path=direct",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ewf status lacks %q:\n%s", want, out)
		}
	}

	c2, in2, _ := connect("c2")
	if r := statusLine(t, lsc, "refused"); r["reason"] != "busy" || r["peer"] != readID(t, bin, filepath.Join(dir, "c2.json")) {
		t.Errorf("refused line: %v", r)
	}
	in2.Close()
	c2.Wait() // its connection was closed by the listener

	in1.Close()
	lin.Close()
	go io.Copy(io.Discard, lerr)
	if err := c1.Wait(); err != nil {
		t.Errorf("first connector: %v", err)
	}
	if err := listen.Wait(); err != nil {
		t.Errorf("listener: %v", err)
	}
	out, err = exec.CommandContext(ctx, bin, "status", "--status-dir", statusDir).Output()
	if err != nil || !bytes.HasPrefix(out, []byte("no listener running")) {
		t.Errorf("ewf status after the listener ended: %q, %v", out, err)
	}
}

func readID(t *testing.T, bin, identity string) string {
	t.Helper()
	out, err := exec.Command(bin, "id", "--identity", identity).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// TestListenMaxPeers: a listener that exposes a service serves at most
// --max-peers peers at once; the next one is refused with a "refused …
// reason=max-peers" line, and `ewf status` lists exactly the peers served.
func TestListenMaxPeers(t *testing.T) {
	bin := buildEWF(t)
	srv := startServer(t)
	dir := t.TempDir()
	statusDir := filepath.Join(dir, "state")
	l := startProc(t, bin, "listen", "--server", srv, "--identity", filepath.Join(dir, "l.json"),
		"--expose", "tcp:127.0.0.1:9", "--max-peers", "2", "--status-dir", statusDir)
	ready := l.line(t, "ready", 20*time.Second)
	var ids []string
	for i := range 3 {
		ident := filepath.Join(dir, fmt.Sprintf("c%d.json", i))
		c := startProc(t, bin, "connect", "--server", srv, "--identity", ident, "--forward", "127.0.0.1:0", ready["id"])
		c.line(t, "connected", 30*time.Second)
		ids = append(ids, readID(t, bin, ident))
		want := "accepted"
		if i == 2 {
			want = "refused"
		}
		got := l.line(t, want, 10*time.Second)
		if got["peer"] != ids[i] || (i == 2 && got["reason"] != "max-peers") {
			t.Errorf("peer %d: %s line %v", i, want, got)
		}
	}
	out, err := exec.Command(bin, "status", "--status-dir", statusDir).Output()
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(out), "\nconn pid="); n != 2 || !strings.Contains(string(out), "peer="+ids[0]) ||
		!strings.Contains(string(out), "peer="+ids[1]) || strings.Contains(string(out), "peer="+ids[2]) {
		t.Errorf("ewf status shows %d connections, want the first two peers:\n%s", n, out)
	}
}
