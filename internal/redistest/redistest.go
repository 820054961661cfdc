// Package redistest starts real redis-server processes on loopback for
// tests: single nodes (optionally with AOF) and a 3-master Redis Cluster,
// each on random ports in a temporary directory, killed in t.Cleanup.
//
// Tests call Skip first (through Start and StartCluster): without
// redis-server on the PATH a test skips with one line, except when env CI is
// set, where it fails, because CI must run them (.ci/run installs the
// redis-server package).
package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Skip skips (or, under CI, fails) tb when redis-server or redis-cli is
// missing.
func Skip(tb testing.TB) {
	tb.Helper()
	for _, cmd := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(cmd); err != nil {
			reason := "redistest: needs " + cmd + " (apt install redis-server)"
			if os.Getenv("CI") != "" {
				tb.Fatal(reason + " (CI must not skip)")
			}
			tb.Skip(reason)
		}
	}
}

// Options of one node.
type Options struct {
	AOF     bool     // appendonly yes with appendfsync always
	Cluster bool     // cluster-enabled yes
	Extra   []string // more redis-server arguments
}

// Server is one redis-server process.
type Server struct {
	tb   testing.TB
	Port int
	Dir  string
	opts Options
	cmd  *exec.Cmd
	exit chan struct{}
}

// Addr is host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// URL is the redis:// URL of database 0.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Start starts one node, waits until it answers PING, and kills it in
// Cleanup.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	Skip(tb)
	s := &Server{tb: tb, Dir: tb.TempDir(), opts: opts}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		s.Port = freePort(tb, opts.Cluster)
		if err = s.start(); err == nil {
			tb.Cleanup(s.Kill)
			return s
		}
	}
	tb.Fatalf("redistest: %v", err)
	return nil
}

// freePort finds a port free on loopback (and, for cluster nodes, its bus
// port +10000 too). Another process may take it before redis-server does;
// Start then tries again.
func freePort(tb testing.TB, cluster bool) int {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !cluster {
			return p
		}
		if p+10000 > 65535 {
			continue
		}
		if b, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000)); err == nil {
			b.Close()
			return p
		}
	}
}

func (s *Server) start() error {
	args := []string{
		"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1", "--dir", s.Dir,
		"--save", "", "--daemonize", "no", "--protected-mode", "no",
		"--logfile", filepath.Join(s.Dir, "redis.log"),
	}
	if s.opts.AOF {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	}
	if s.opts.Cluster {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000")
	}
	args = append(args, s.opts.Extra...)
	cmd := exec.Command("redis-server", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exit := make(chan struct{})
	go func() { cmd.Wait(); close(exit) }()
	s.cmd, s.exit = cmd, exit
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exit:
			log, _ := os.ReadFile(filepath.Join(s.Dir, "redis.log"))
			return fmt.Errorf("redis-server on port %d exited: %s", s.Port, lastLines(string(log), 5))
		default:
		}
		if r, err := s.Do("PING"); err == nil && r == "PONG" {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Kill()
	return fmt.Errorf("redis-server on port %d did not answer PING within 10 s", s.Port)
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// Kill kills the process (SIGKILL) and waits for it.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exit
	s.cmd = nil
}

// Stop kills the process; Restart starts it again on the same port and
// directory (with AOF, the data comes back).
func (s *Server) Stop() { s.Kill() }

// Restart starts a stopped server again.
func (s *Server) Restart() {
	s.tb.Helper()
	if err := s.start(); err != nil {
		s.tb.Fatalf("redistest: restart: %v", err)
	}
}

// Do sends one command (inline, space-separated arguments without spaces)
// and returns the first line of the reply without its type byte; an error
// reply is returned as an error.
func (s *Server) Do(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\r\n", strings.Join(args, " ")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "-") {
		return "", fmt.Errorf("redis: %s", line[1:])
	}
	return strings.TrimLeft(line, "+:$"), nil
}

// Cluster is a Redis Cluster of masters without replicas.
type Cluster struct {
	Nodes []*Server
}

// URL is the redis+cluster:// URL of all nodes.
func (c *Cluster) URL() string {
	var a []string
	for _, n := range c.Nodes {
		a = append(a, n.Addr())
	}
	return "redis+cluster://" + strings.Join(a, ",")
}

// StartCluster starts n cluster-enabled nodes, joins them with
// redis-cli --cluster create (slots spread evenly, no replicas), and waits
// until every node reports cluster_state:ok.
func StartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	Skip(tb)
	c := &Cluster{}
	var addrs []string
	for range n {
		s := Start(tb, Options{Cluster: true})
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, s := range c.Nodes {
		for {
			info, err := s.bulk("CLUSTER", "INFO")
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("redistest: cluster not ok on %s: %v %s", s.Addr(), err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// bulk is Do for a bulk-string reply: its whole body.
func (s *Server) bulk(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\r\n", strings.Join(args, " ")); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if !strings.HasPrefix(line, "$") {
		return line, fmt.Errorf("redis: not a bulk reply: %s", line)
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil || n < 0 {
		return "", fmt.Errorf("redis: bad bulk length %q", line)
	}
	b := make([]byte, n+2)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b[:n]), nil
}

// Info returns INFO section's body.
func (s *Server) Info(section string) (string, error) { return s.bulk("INFO", section) }
