//go:build linux

package natlab

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Proc is a program running inside a lab host. Its stderr is collected line
// by line for WaitLine; its stdout is collected for Stdout/WaitOutput.
type Proc struct {
	name  string
	host  string
	cmd   *exec.Cmd
	stdin io.WriteCloser

	mu       sync.Mutex
	lines    []string
	next     int // lines before next were returned by WaitLine
	stdout   bytes.Buffer
	changed  chan struct{} // closed and replaced on every new line or output
	exited   bool
	waitErr  error
	done     chan struct{} // closed once the process is reaped
	readers  sync.WaitGroup
	killOnce sync.Once
}

// ErrExited is returned by WaitLine and WaitOutput when the process ended
// before printing what was waited for.
var ErrExited = errors.New("natlab: process exited")

// ErrTimeout is returned by WaitLine and WaitOutput when the time is up.
var ErrTimeout = errors.New("natlab: timed out")

// ErrorLine is returned by WaitLine when the process printed an
// "error key=value..." line instead of the awaited one.
type ErrorLine struct {
	Line   string
	Fields map[string]string
}

func (e *ErrorLine) Error() string { return "natlab: process reported: " + e.Line }

// Start runs binary with args inside host's namespace (via
// `ip netns exec`). The process gets SIGKILL if the test binary dies, and
// is killed and reaped by Kill or by the lab's Close.
func (l *Lab) Start(hostName, binary string, args ...string) (*Proc, error) {
	h := l.host(hostName)
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.ns, binary}, args...)...)
	// ip netns exec execs the binary in place, so the death signal set for
	// the child stays with the binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &Proc{
		name:    filepath.Base(binary),
		host:    hostName,
		cmd:     cmd,
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p.stdin = stdin

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("natlab: lab is closed")
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("natlab: start %s on %s: %w", binary, hostName, err)
	}
	l.procs = append(l.procs, p)
	p.readers.Add(2)
	go p.readLines(stderr)
	go p.readOutput(stdout)
	go func() {
		p.readers.Wait() // Wait closes the pipes: read them to the end first
		err := cmd.Wait()
		p.mu.Lock()
		p.exited = true
		p.waitErr = err
		p.notifyLocked()
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *Proc) readLines(r io.Reader) {
	defer p.readers.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p.mu.Lock()
		p.lines = append(p.lines, sc.Text())
		p.notifyLocked()
		p.mu.Unlock()
	}
}

func (p *Proc) readOutput(r io.Reader) {
	defer p.readers.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			p.mu.Lock()
			p.stdout.Write(buf[:n])
			p.notifyLocked()
			p.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

func (p *Proc) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Pid is the process id (of the binary itself: ip netns exec execs it).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stdin is the process's standard input.
func (p *Proc) Stdin() io.WriteCloser { return p.stdin }

// Lines returns every stderr line so far.
func (p *Proc) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// Stdout returns everything written to stdout so far.
func (p *Proc) Stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String()
}

// WaitLine waits for the next stderr line (after those returned by earlier
// calls) whose first word is word, and returns its key=value fields.
// Values may be double-quoted Go-style strings. If an "error ..." line comes
// first it returns an *ErrorLine; if the process exits first, ErrExited;
// after timeout, ErrTimeout. The error text carries the last stderr lines.
func (p *Proc) WaitLine(word string, timeout time.Duration) (map[string]string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		for p.next < len(p.lines) {
			line := p.lines[p.next]
			p.next++
			first, _, _ := strings.Cut(line, " ")
			if first == word {
				p.mu.Unlock()
				f, err := ParseFields(line)
				if err != nil {
					return nil, fmt.Errorf("natlab: %s on %s: %q: %w", p.name, p.host, line, err)
				}
				return f, nil
			}
			if first == "error" {
				p.mu.Unlock()
				f, _ := ParseFields(line)
				return f, &ErrorLine{Line: line, Fields: f}
			}
		}
		exited, changed := p.exited, p.changed
		p.mu.Unlock()
		if exited {
			return nil, p.failure(ErrExited, word)
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil, p.failure(ErrTimeout, word)
		}
	}
}

// WaitOutput waits until stdout contains s.
func (p *Proc) WaitOutput(s string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		found := strings.Contains(p.stdout.String(), s)
		exited, changed := p.exited, p.changed
		p.mu.Unlock()
		if found {
			return nil
		}
		if exited {
			return p.failure(ErrExited, fmt.Sprintf("stdout %q", s))
		}
		select {
		case <-changed:
		case <-deadline.C:
			return p.failure(ErrTimeout, fmt.Sprintf("stdout %q", s))
		}
	}
}

func (p *Proc) failure(err error, what string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	tail := p.lines
	if len(tail) > 10 {
		tail = tail[len(tail)-10:]
	}
	status := ""
	if p.exited {
		status = fmt.Sprintf(" (%v)", p.waitErr)
	}
	return fmt.Errorf("%w%s waiting for %s from %s on %s; stderr tail:\n\t%s",
		err, status, what, p.name, p.host, strings.Join(tail, "\n\t"))
}

// Wait waits for the process to exit by itself and returns its exit error.
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.waitErr
	case <-time.After(timeout):
		return p.failure(ErrTimeout, "exit")
	}
}

// Kill kills the process and waits (up to 5 s) until it is reaped.
func (p *Proc) Kill() { p.kill() }

func (p *Proc) kill() {
	p.killOnce.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.stdin.Close()
	})
	// The binary dies at once; only a child it forked could hold the
	// pipes open. Close then kills whatever is left in the namespaces.
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// alive reports whether the process has not been reaped yet.
func (p *Proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// ParseFields parses the key=value fields of a status line such as
// `connected peer=ab12 transport=udp rtt_ms=3 msg="a \"b\""`. The first
// word (the event) is skipped; words without '=' are ignored.
func ParseFields(line string) (map[string]string, error) {
	fields := map[string]string{}
	_, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	for {
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			return fields, nil
		}
		eq := strings.IndexByte(rest, '=')
		sp := strings.IndexAny(rest, " \t")
		if eq < 0 || (sp >= 0 && sp < eq) {
			// A bare word.
			if sp < 0 {
				return fields, nil
			}
			rest = rest[sp:]
			continue
		}
		key := rest[:eq]
		rest = rest[eq+1:]
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return fields, fmt.Errorf("field %s: bad quoted value: %w", key, err)
			}
			v, err := strconv.Unquote(q)
			if err != nil {
				return fields, fmt.Errorf("field %s: %w", key, err)
			}
			fields[key] = v
			rest = rest[len(q):]
			continue
		}
		end := strings.IndexAny(rest, " \t")
		if end < 0 {
			end = len(rest)
		}
		fields[key] = rest[:end]
		rest = rest[end:]
	}
}

// BuildBinaries builds cmd/ewfd and cmd/ewf into tb.TempDir() and returns
// their paths. Call it once per test that runs them; a second call only
// relinks (the go build cache has the rest).
func BuildBinaries(tb testing.TB) (ewfd, ewf string) {
	tb.Helper()
	dir := tb.TempDir()
	for _, name := range []string{"ewfd", "ewf"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name),
			"github.com/ewf-project/ewf/cmd/"+name).CombinedOutput()
		if err != nil {
			tb.Fatalf("natlab: go build cmd/%s: %v\n%s", name, err, out)
		}
	}
	return filepath.Join(dir, "ewfd"), filepath.Join(dir, "ewf")
}
