//go:build linux

package natlab

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStaleLabCleanup leaves a lab behind as a killed test binary would,
// and checks that the next lab removes it (namespaces, links, processes,
// prefix file) while a live lab is left alone.
func TestStaleLabCleanup(t *testing.T) {
	Skip(t)
	live := New(t, Spec{Hosts: []HostSpec{{Name: "pub"}}})

	// A dead owner: a process that has exited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	pid := dead.Process.Pid
	prefix := fmt.Sprintf("ewf%dz-", pid%10000)
	orphan := fmt.Sprintf("ewf%dy-", (pid+1)%10000) // namespaces without a prefix file
	if err := os.WriteFile(prefixFile(prefix), []byte(fmt.Sprintf("%d %d\n", pid, 12345)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{prefix + "x", prefix + "y", orphan + "x"} {
		if err := run("", "ip", "netns", "add", ns); err != nil {
			t.Fatal(err)
		}
	}
	if err := veth(prefix+"x", "eth0", prefix+"y", "eth0"); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A program left running inside the stale lab.
	straggler := exec.Command("ip", "netns", "exec", prefix+"x", exe, "-test.run=^TestHelperProcess$", "--", "natlab-helper", "echo")
	stderr, _ := straggler.StderrPipe()
	if err := straggler.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stderr).ReadString('\n'); err != nil {
		t.Fatalf("straggler: %q, %v", line, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- straggler.Wait() }()

	cleanStale()

	nss, _ := listNetns()
	for _, ns := range nss {
		if strings.HasPrefix(ns, prefix) || strings.HasPrefix(ns, orphan) {
			t.Errorf("stale namespace %s survived", ns)
		}
	}
	if _, err := os.Stat(prefixFile(prefix)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale prefix file: %v", err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		straggler.Process.Kill()
		t.Error("the program in the stale lab was not killed")
	}
	if _, err := os.Stat(netnsDir + "/" + live.Namespace("pub")); err != nil {
		t.Errorf("the live lab was touched: %v", err)
	}
}

// TestInterruptTearsDown interrupts a test binary that holds a lab with a
// running program and a forwarder, as Ctrl-C does to go test, and checks
// that the lab is gone once the binary has died of the signal.
func TestInterruptTearsDown(t *testing.T) {
	Skip(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestHelperProcess$", "--", "natlab-helper", "lab")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	var prefix string
	var pid int
	if _, serr := fmt.Sscanf(line, "lab %s %d", &prefix, &pid); err != nil || serr != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper said %q (%v)", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGINT {
		t.Errorf("helper exit = %v, want death by SIGINT", err)
	}
	nss, _ := listNetns()
	for _, ns := range nss {
		if strings.HasPrefix(ns, prefix) {
			t.Errorf("namespace %s survived the interrupt", ns)
		}
	}
	if _, err := os.Stat(prefixFile(prefix)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("prefix file survived the interrupt: %v", err)
	}
	if startTime(pid) != -1 {
		t.Errorf("program %d in the lab survived the interrupt", pid)
	}
}

// TestMatrixLab builds the lab the connection matrix will use, verifies
// every router in it with the probe, and checks that Close leaves nothing.
func TestMatrixLab(t *testing.T) {
	Skip(t)
	start := time.Now()
	l, err := build(MatrixSpec())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	built := time.Since(start)
	got, err := l.Verify()
	t.Logf("built %d namespaces in %v, verified in %v", len(l.nss), built.Round(time.Millisecond), (time.Since(start) - built).Round(time.Millisecond))
	for _, h := range l.Hosts() {
		if b, ok := got[h]; ok {
			t.Logf("%-20s %v", h, b)
		}
	}
	if err != nil {
		t.Error(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if left := l.Leftovers(); len(left) > 0 {
		t.Errorf("left behind after Close: %v", left)
	}
}
