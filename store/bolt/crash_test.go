package bolt

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ewf-project/ewf/store"
)

// The crash test runs the test binary again as a child that registers as
// fast as it can and prints each registration once its done(nil) fired,
// which is exactly when ewfd would send REGISTER success. The parent
// SIGKILLs it mid-stream and checks that every printed registration is in
// the reopened store. Printing after done only makes the printed set smaller
// than the acknowledged one, never larger, so the check is sound.
const (
	crashDirEnv  = "EWF_STORE_CRASH_DIR"
	crashSeedEnv = "EWF_STORE_CRASH_SEED"
)

func TestCrashLosesNoAcknowledgedRegistration(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes")
	}
	dir := t.TempDir()
	acked := map[store.ID]store.Key{}
	for round := range 3 {
		lines, stderr := runCrashChild(t, dir, round, 300*time.Millisecond)
		n := 0
		for _, line := range lines {
			id, key, err := parseAck(line)
			if err != nil {
				t.Fatalf("round %d: child printed %q: %v\nstderr:\n%s", round, line, err, stderr)
			}
			acked[id] = key
			n++
		}
		if n == 0 {
			t.Fatalf("round %d: child acknowledged nothing before the kill\nstderr:\n%s", round, stderr)
		}

		s := open(t, dir, Options{})
		missing := 0
		for id, key := range acked {
			if k, ok := s.Lookup(id); !ok || k != key {
				missing++
				if missing <= 5 {
					t.Errorf("round %d: acknowledged %x lost or changed (found %v)", round, id, ok)
				}
			}
		}
		t.Logf("round %d: %d acknowledged before SIGKILL, %d acknowledged in all, %d in store, %d lost",
			round, n, len(acked), s.Len(), missing)
		mustClose(t, s)
		if missing > 0 {
			t.FailNow()
		}
	}
}

// runCrashChild starts the helper, lets it run for d after its first
// acknowledgement, SIGKILLs it and returns the complete lines it printed.
func runCrashChild(t *testing.T, dir string, seed int, d time.Duration) (lines []string, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCrash$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashSeedEnv+"="+strconv.Itoa(seed))
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	first := make(chan struct{})
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		r := bufio.NewReader(out)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return // EOF after the kill; a partial last line is dropped
			}
			if len(lines) == 0 {
				close(first)
			}
			lines = append(lines, strings.TrimSuffix(line, "\n"))
		}
	}()
	select {
	case <-first:
		time.Sleep(d)
	case <-readDone:
	case <-time.After(30 * time.Second):
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	<-readDone
	cmd.Wait() // killed: the error is expected
	return lines, errBuf.String()
}

func parseAck(line string) (id store.ID, key store.Key, err error) {
	f := strings.Fields(line)
	if len(f) != 2 || len(f[0]) != 32 || len(f[1]) != 32 {
		return id, key, fmt.Errorf("want two 32-digit hex fields")
	}
	if _, err := hex.Decode(id[:], []byte(f[0])); err != nil {
		return id, key, err
	}
	_, err = hex.Decode(key[:], []byte(f[1]))
	return id, key, err
}

// TestHelperCrash is the child of TestCrashLosesNoAcknowledgedRegistration.
func TestHelperCrash(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("child process of TestCrashLosesNoAcknowledgedRegistration")
	}
	seed, _ := strconv.Atoi(os.Getenv(crashSeedEnv))
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// done runs on the committer; it hands the acknowledgement to a printer
	// so that stdout does not slow the commits.
	type ack struct {
		id  store.ID
		key store.Key
	}
	acks := make(chan ack, 1<<16)
	go func() {
		w := bufio.NewWriter(os.Stdout)
		for a := range acks {
			fmt.Fprintf(w, "%x %x\n", a.id, a.key)
			if len(acks) == 0 {
				w.Flush()
			}
		}
	}()
	inflight := make(chan struct{}, 512)
	is, ks := ids(uint64(1000+seed), 1<<20)
	deadline := time.Now().Add(20 * time.Second) // the parent kills us long before
	for i := 0; time.Now().Before(deadline); i++ {
		inflight <- struct{}{}
		id, key := is[i%len(is)], ks[i%len(ks)]
		s.Register(id, key, t0, func(err error) {
			<-inflight
			if err == nil {
				acks <- ack{id, key}
			}
		})
	}
	os.Exit(2) // not reached when the parent is alive
}
