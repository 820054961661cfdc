//go:build linux

package natlab

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Every lab's namespaces are named "ewf<pid%10000><letter>-<node>". The
// owner of a prefix is recorded in stateDir/<prefix> as "<pid> <start>",
// where start is the process start time from /proc/<pid>/stat, so a reused
// pid is not mistaken for the owner. The file is created (O_EXCL) before the
// first namespace and removed after the last, so a namespace of the family
// without a file, or whose owner is gone, is stale.
const stateDir = "/run/ewf-natlab"

var prefixRE = regexp.MustCompile(`^(ewf[0-9]{1,4}[a-z]-)`)

func prefixFile(prefix string) string { return stateDir + "/" + prefix }

// claimPrefix reserves a fresh prefix for this process.
func claimPrefix() (string, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return "", fmt.Errorf("natlab: %w", err)
	}
	pid := os.Getpid()
	owner := fmt.Sprintf("%d %d\n", pid, startTime(pid))
	for c := 'a'; c <= 'z'; c++ {
		prefix := fmt.Sprintf("ewf%d%c-", pid%10000, c)
		f, err := os.OpenFile(prefixFile(prefix), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue // ours from an earlier lab, or another live process's
		}
		if err != nil {
			return "", fmt.Errorf("natlab: %w", err)
		}
		_, err = f.WriteString(owner)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(f.Name())
			return "", fmt.Errorf("natlab: %w", err)
		}
		return prefix, nil
	}
	return "", errors.New("natlab: no free lab prefix for this process (26 labs open?)")
}

func releasePrefix(prefix string) error {
	err := os.Remove(prefixFile(prefix))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// startTime returns field 22 of /proc/pid/stat, or -1.
func startTime(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name may contain spaces and parentheses; fields after the
	// last ')' are well formed. Field 3 is the first after it.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return -1
	}
	v, err := strconv.ParseInt(f[19], 10, 64)
	if err != nil {
		return -1
	}
	return v
}

// ownerAlive reports whether the process recorded for prefix still runs.
func ownerAlive(prefix string) bool {
	b, err := os.ReadFile(prefixFile(prefix))
	if err != nil {
		return false
	}
	var pid int
	var start int64
	if _, err := fmt.Sscan(string(b), &pid, &start); err != nil {
		return false
	}
	return startTime(pid) == start && start != -1
}

// cleanStale removes labs left behind by processes that died without
// closing them (a test binary killed by -timeout, SIGKILL, a crash).
// Labs of live processes, including other test binaries running now, are
// left alone.
func cleanStale() {
	stale := map[string]bool{}
	nss, _ := listNetns()
	for _, ns := range nss {
		if m := prefixRE.FindStringSubmatch(ns); m != nil && !ownerAlive(m[1]) {
			stale[m[1]] = true
		}
	}
	files, _ := os.ReadDir(stateDir)
	for _, f := range files {
		if m := prefixRE.FindStringSubmatch(f.Name()); m != nil && m[1] == f.Name() && !ownerAlive(m[1]) {
			stale[m[1]] = true
		}
	}
	for prefix := range stale {
		_ = removeLab(prefix, nil)
	}
}

// Open labs, so that SIGINT/SIGTERM can tear them down.
var (
	openMu    sync.Mutex
	openLabs  = map[*Lab]bool{}
	watchOnce sync.Once
)

func register(l *Lab) {
	watchOnce.Do(func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
		go watchSignals(ch)
	})
	openMu.Lock()
	openLabs[l] = true
	openMu.Unlock()
}

func unregister(l *Lab) {
	openMu.Lock()
	delete(openLabs, l)
	openMu.Unlock()
}

// watchSignals closes every open lab on SIGINT or SIGTERM, then lets the
// signal do what it would have done.
func watchSignals(ch chan os.Signal) {
	sig := <-ch
	openMu.Lock()
	labs := make([]*Lab, 0, len(openLabs))
	for l := range openLabs {
		labs = append(labs, l)
	}
	openMu.Unlock()
	for _, l := range labs {
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	fmt.Fprintf(os.Stderr, "natlab: %v: closed %d lab(s)\n", sig, len(labs))
	signal.Reset(sig)
	_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
}
