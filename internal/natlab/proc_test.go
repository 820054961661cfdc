//go:build linux

package natlab

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseFields(t *testing.T) {
	tests := []struct {
		line string
		want map[string]string
	}{
		{"ready id=0123abcd public=203.0.113.11:40000",
			map[string]string{"id": "0123abcd", "public": "203.0.113.11:40000"}},
		{`error reason=timeout msg="no answer from \"peer\" after 10s"`,
			map[string]string{"reason": "timeout", "msg": `no answer from "peer" after 10s`}},
		{"connected  peer=ab   transport=udp rtt_ms=3 ",
			map[string]string{"peer": "ab", "transport": "udp", "rtt_ms": "3"}},
		{"event bare words a=1 more", map[string]string{"a": "1"}},
		{`x empty= q=""`, map[string]string{"empty": "", "q": ""}},
		{"ready", map[string]string{}},
	}
	for _, tt := range tests {
		got, err := ParseFields(tt.line)
		if err != nil {
			t.Errorf("ParseFields(%q): %v", tt.line, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseFields(%q) = %v, want %v", tt.line, got, tt.want)
		}
	}
	if _, err := ParseFields(`error msg="unterminated`); err == nil {
		t.Error("ParseFields accepted an unterminated quote")
	}
}

// TestHelperProcess is not a test: Start runs the test binary with it as a
// stand-in for ewf inside a lab host.
func TestHelperProcess(t *testing.T) {
	args := flag.Args()
	if len(args) < 2 || args[0] != "natlab-helper" {
		t.Skip("helper process for TestStart")
	}
	switch args[1] {
	case "echo":
		addr := "none"
		ifs, _ := net.InterfaceAddrs()
		for _, a := range ifs {
			if ip, ok := a.(*net.IPNet); ok && !ip.IP.IsLoopback() {
				addr = ip.IP.String()
			}
		}
		fmt.Fprintln(os.Stderr, "time=now level=INFO msg=starting")
		fmt.Fprintf(os.Stderr, "ready id=%032x public=%s:4000\n", 7, addr)
		fmt.Fprintln(os.Stderr, `connected peer=ab transport=udp msg="hello \"lab\""`)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			fmt.Println("echo:", sc.Text())
		}
		select {} // stay until killed
	case "lab":
		// A lab with a program in it, for TestInterruptTearsDown.
		l, err := build(Spec{
			Routers: []RouterSpec{{Name: "gw", NAT: FullCone, WAN: Link{Delay: time.Millisecond}}},
			Hosts:   []HostSpec{{Name: "peer", Router: "gw"}},
		})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		exe, _ := os.Executable()
		p, err := l.Start("peer", exe, "-test.run=^TestHelperProcess$", "--", "natlab-helper", "echo")
		if err == nil {
			_, err = p.WaitLine("ready", 10*time.Second)
		}
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println("lab", l.Prefix(), p.Pid())
		select {}
	case "fail":
		fmt.Fprintln(os.Stderr, `error reason=refused msg="peer said no"`)
		os.Exit(3)
	}
	os.Exit(2)
}

// TestStart runs a program in a lab host, reads its status lines and
// output, and checks that Close kills it and leaves nothing behind.
func TestStart(t *testing.T) {
	Skip(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	l, err := build(Spec{
		Routers: []RouterSpec{{Name: "gw", NAT: PortRestricted}},
		Hosts:   []HostSpec{{Name: "peer", Router: "gw"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	helper := func(role string) *Proc {
		p, err := l.Start("peer", exe, "-test.run=^TestHelperProcess$", "--", "natlab-helper", role)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	p := helper("echo")
	f, err := p.WaitLine("ready", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The address proves the program runs inside the host's namespace.
	if want := l.Addr("peer").String() + ":4000"; f["public"] != want || len(f["id"]) != 32 {
		t.Errorf("ready fields = %v, want public=%s and a 32-digit id", f, want)
	}
	if f, err = p.WaitLine("connected", 5*time.Second); err != nil || f["msg"] != `hello "lab"` {
		t.Errorf("connected: %v, %v", f, err)
	}
	if _, err := io.WriteString(p.Stdin(), "ping\n"); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitOutput("echo: ping", 5*time.Second); err != nil {
		t.Error(err)
	}
	if _, err := p.WaitLine("ready", 300*time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Errorf("second WaitLine(ready) = %v, want ErrTimeout (lines are consumed)", err)
	}

	q := helper("fail")
	var el *ErrorLine
	if _, err := q.WaitLine("ready", 10*time.Second); !errors.As(err, &el) || el.Fields["reason"] != "refused" {
		t.Errorf("WaitLine on a failing program = %v, want an ErrorLine with reason=refused", err)
	}
	if err := q.Wait(5 * time.Second); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Wait = %v, want exit status 3", err)
	}
	if _, err := q.WaitLine("ready", time.Second); !errors.Is(err, ErrExited) {
		t.Errorf("WaitLine after exit = %v, want ErrExited", err)
	}

	pid := p.Pid()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if left := l.Leftovers(); len(left) > 0 {
		t.Errorf("left behind after Close: %v", left)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("helper pid %d after Close: kill(0) = %v, want ESRCH", pid, err)
	}
	if _, err := l.Start("peer", exe); err == nil {
		t.Error("Start on a closed lab succeeded")
	}
}
