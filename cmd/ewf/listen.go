package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ewf-project/ewf"
)

// A listener that runs for weeks: every peer that connects is reported on
// stderr ("accepted peer=… transport=… path=… remote=…", or "refused …
// reason=max-peers|busy"), at most --max-peers are served at once, and the
// listener's state is written to a status file that `ewf status` prints.
//
// Status files. Each running `ewf listen` keeps <state dir>/listen-<pid>.json
// (state dir: --status-dir, default $XDG_STATE_HOME/ewf or
// ~/.local/state/ewf), rewritten atomically (temp file + rename) whenever a
// peer comes or goes and every statusEvery, and removed on exit. A file is
// a snapshot, not a live view: it may be up to statusEvery old. A file
// whose process is gone (killed with SIGKILL) is skipped and removed by
// `ewf status`. Files rather than a control socket: nothing listens, there
// is nothing to authenticate, and the directory's permissions (0700) say
// who may read them.

// statusEvery is how often a listener rewrites its status file even when
// no peer came or went, so that binding changes show.
const statusEvery = 5 * time.Second

// defaultMaxPeers bounds the peers one listener serves at once.
const defaultMaxPeers = 64

// listenStatus is the content of a status file.
type listenStatus struct {
	PID      int          `json:"pid"`
	ID       string       `json:"id"`
	Server   string       `json:"server"`
	Started  time.Time    `json:"started"`
	Updated  time.Time    `json:"updated"`
	Bindings []bindStatus `json:"bindings"`
	Conns    []connStatus `json:"connections"`
}

type bindStatus struct {
	Transport string `json:"transport"`
	Public    string `json:"public"`
}

type connStatus struct {
	Peer      string    `json:"peer"`
	Transport string    `json:"transport"`
	Path      string    `json:"path"`
	Relay     string    `json:"relay,omitempty"`
	RelayTr   string    `json:"relay_transport,omitempty"`
	Remote    string    `json:"remote"`
	RTTms     int64     `json:"rtt_ms"`
	Since     time.Time `json:"since"`
}

// peers tracks a listener's connections and keeps its status file.
type peers struct {
	n    *ewf.Node
	max  int
	path string // status file; "" writes none

	mu      sync.Mutex
	conns   map[*ewf.Conn]connStatus
	stops   map[*ewf.Conn]chan struct{} // end the path watch of a connection (watchPath)
	started time.Time
}

func newPeers(n *ewf.Node, max int, dir string) *peers {
	p := &peers{n: n, max: max, conns: map[*ewf.Conn]connStatus{}, stops: map[*ewf.Conn]chan struct{}{}, started: time.Now()}
	if dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			status("warning", "msg", strconv.Quote("status file: "+err.Error()))
		} else {
			p.path = filepath.Join(dir, fmt.Sprintf("listen-%d.json", os.Getpid()))
		}
	}
	p.write()
	return p
}

// admit registers c and reports it, or refuses it (closing it) when
// max peers are connected already.
func (p *peers) admit(c *ewf.Conn) bool {
	cs := connStatus{
		Peer: c.Peer().String(), Transport: string(c.Transport()), Path: string(c.Path()),
		Remote: c.RemoteAddr().String(), RTTms: c.RTT().Milliseconds(), Since: time.Now(),
	}
	if r, ok := c.Relay(); ok {
		via, _ := c.RelayTransport()
		cs.Relay, cs.RelayTr = r.String(), string(via)
	}
	stop := make(chan struct{})
	p.mu.Lock()
	full := len(p.conns) >= p.max
	if !full {
		p.conns[c] = cs
		p.stops[c] = stop
	}
	p.mu.Unlock()
	if full {
		status("refused", "peer", cs.Peer, "transport", cs.Transport, "reason", "max-peers")
		// Close lingers up to a few seconds for the peer's acknowledgement;
		// the accept loop must not wait for it.
		go c.Close()
		return false
	}
	kv := []string{"peer", cs.Peer, "transport", cs.Transport, "path", cs.Path}
	if cs.Relay != "" {
		kv = append(kv, "relay", cs.Relay, "relay_transport", cs.RelayTr)
	}
	status("accepted", append(kv, "remote", cs.Remote, "rtt_ms", strconv.FormatInt(cs.RTTms, 10))...)
	p.write()
	watchPath(c, stop, func() { p.moved(c) })
	return true
}

// moved updates the status of c, which moved to a direct path.
func (p *peers) moved(c *ewf.Conn) {
	p.mu.Lock()
	cs, ok := p.conns[c]
	if ok {
		cs.Path, cs.Relay = string(c.Path()), ""
		cs.Remote, cs.RTTms = c.RemoteAddr().String(), c.RTT().Milliseconds()
		p.conns[c] = cs
	}
	p.mu.Unlock()
	if ok {
		p.write()
	}
}

// done forgets c after it ended.
func (p *peers) done(c *ewf.Conn, err error) {
	p.mu.Lock()
	cs, ok := p.conns[c]
	delete(p.conns, c)
	if stop := p.stops[c]; stop != nil {
		close(stop)
		delete(p.stops, c)
	}
	p.mu.Unlock()
	if !ok {
		return
	}
	kv := []string{"peer", cs.Peer, "transport", cs.Transport, "seconds", strconv.FormatFloat(time.Since(cs.Since).Seconds(), 'f', 1, 64)}
	if err != nil {
		kv = append(kv, "err", strconv.Quote(err.Error()))
	}
	status("closed", kv...)
	p.write()
}

// write rewrites the status file.
func (p *peers) write() {
	if p.path == "" {
		return
	}
	st := listenStatus{
		PID: os.Getpid(), ID: p.n.ID().String(), Server: p.n.Server().String(),
		Started: p.started, Updated: time.Now(),
	}
	if !p.n.UDPBlocked() {
		st.Bindings = append(st.Bindings, bindStatus{Transport: "udp", Public: p.n.PublicAddr().String()})
	}
	if a, ok := p.n.PublicTCPAddr(); ok {
		st.Bindings = append(st.Bindings, bindStatus{Transport: "tcp", Public: a.String()})
	}
	p.mu.Lock()
	for _, cs := range p.conns {
		st.Conns = append(st.Conns, cs)
	}
	p.mu.Unlock()
	sort.Slice(st.Conns, func(i, j int) bool { return st.Conns[i].Since.Before(st.Conns[j].Since) })
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return
	}
	tmp := p.path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err == nil {
		err = os.Rename(tmp, p.path)
	}
}

// keepWriting rewrites the status file every statusEvery until ctx ends,
// then removes it.
func (p *peers) keepWriting(ctx context.Context) {
	t := time.NewTicker(statusEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if p.path != "" {
				os.Remove(p.path)
			}
			return
		case <-t.C:
			p.write()
		}
	}
}

// defaultStatusDir is $XDG_STATE_HOME/ewf, or ~/.local/state/ewf.
func defaultStatusDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "ewf")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".local", "state", "ewf")
}

func runStatus(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	dir := fs.String("status-dir", defaultStatusDir(), "`directory` of the listeners' status files")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(*dir, "listen-*.json"))
	if err != nil {
		return err
	}
	sort.Strings(files)
	found := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // removed meanwhile
		}
		var st listenStatus
		if err := json.Unmarshal(b, &st); err != nil {
			fmt.Fprintf(out, "# %s: %v\n", f, err)
			continue
		}
		if !alive(st.PID) {
			os.Remove(f) // its listener was killed before it could
			continue
		}
		found++
		pid := strconv.Itoa(st.PID)
		fmt.Fprintf(out, "listener pid=%s id=%s server=%s up_s=%d updated_s_ago=%d\n", pid, st.ID, st.Server,
			int(time.Since(st.Started).Seconds()), int(time.Since(st.Updated).Seconds()))
		for _, bs := range st.Bindings {
			fmt.Fprintf(out, "binding pid=%s transport=%s public=%s\n", pid, bs.Transport, bs.Public)
		}
		for _, cs := range st.Conns {
			relay := ""
			if cs.Relay != "" {
				relay = " relay=" + cs.Relay + " relay_transport=" + cs.RelayTr
			}
			fmt.Fprintf(out, "conn pid=%s peer=%s transport=%s path=%s%s remote=%s rtt_ms=%d up_s=%d\n", pid, cs.Peer,
				cs.Transport, cs.Path, relay, cs.Remote, cs.RTTms, int(time.Since(cs.Since).Seconds()))
		}
	}
	if found == 0 {
		fmt.Fprintf(out, "no listener running (status files in %s)\n", *dir)
	}
	return nil
}

// alive reports whether process pid exists and, where /proc tells, is
// an ewf listen (a killed listener's pid may have been reused).
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist) || !procMounted()
	}
	return bytes.Contains(cmdline, []byte("\x00listen\x00"))
}

func procMounted() bool {
	_, err := os.Stat("/proc/self/cmdline")
	return err == nil
}
