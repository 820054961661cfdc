package forward

import (
	"bytes"
	"errors"
	"testing"
)

// TestRequestBytes pins the request layout written by hand from the
// package doc, after a non-empty prefix.
func TestRequestBytes(t *testing.T) {
	r := request{kind: kindUDP, flow: 0x01020304, label: "dns"}
	got := r.appendTo([]byte{0xff})
	want := []byte{0xff, 1, 2, 1, 2, 3, 4, 3, 'd', 'n', 's'}
	if !bytes.Equal(got, want) {
		t.Fatalf("% x, want % x", got, want)
	}
	back, n, err := parseRequest(got[1:])
	if err != nil || n != len(want)-1 || back != r {
		t.Fatalf("parse: %+v %d %v", back, n, err)
	}
	for i := range len(want) - 1 {
		if _, _, err := parseRequest(got[1 : 1+i]); !errors.Is(err, ErrShortHeader) {
			t.Errorf("prefix of %d bytes: %v", i, err)
		}
	}
	bad := append([]byte(nil), got[1:]...)
	bad[0] = 2
	if _, _, err := parseRequest(bad); !errors.Is(err, ErrVersion) {
		t.Errorf("version 2: %v", err)
	}
	bad[0], bad[6] = 1, MaxLabel+1
	if _, _, err := parseRequest(bad); !errors.Is(err, ErrBadLabel) {
		t.Errorf("long label: %v", err)
	}
}

func TestAnswerBytes(t *testing.T) {
	a := answer{status: statusRefused, msg: "no"}
	got := a.appendTo(nil)
	if want := []byte{1, 2, 'n', 'o'}; !bytes.Equal(got, want) {
		t.Fatalf("% x, want % x", got, want)
	}
	for i := range len(got) {
		if _, _, err := parseAnswer(got[:i]); !errors.Is(err, ErrShortHeader) {
			t.Errorf("prefix of %d bytes: %v", i, err)
		}
	}
	long := answer{msg: string(bytes.Repeat([]byte("x"), 300))}
	if b := long.appendTo(nil); len(b) != 2+255 {
		t.Errorf("a 300-byte message encodes to %d bytes, want it cut to 255", len(b))
	}
}

func TestParse(t *testing.T) {
	svcs := []struct {
		in   string
		want Service
		ok   bool
	}{
		{"tcp:127.0.0.1:22", Service{"", "tcp", "127.0.0.1:22"}, true},
		{"ssh=tcp:127.0.0.1:22", Service{"ssh", "tcp", "127.0.0.1:22"}, true},
		{"dns=udp:[::1]:53", Service{"dns", "udp", "[::1]:53"}, true},
		{"127.0.0.1:80", Service{"", "tcp", "127.0.0.1:80"}, true},
		{"=tcp:127.0.0.1:22", Service{}, false},
		{"a b=tcp:127.0.0.1:22", Service{}, false},
		{"tcp:127.0.0.1", Service{}, false},
		{"tcp:127.0.0.1:0", Service{}, false},
	}
	for _, c := range svcs {
		got, err := ParseService(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseService(%q) = %+v, %v", c.in, got, err)
		}
	}
	fws := []struct {
		in   string
		want Forward
		ok   bool
	}{
		{"127.0.0.1:2222", Forward{"tcp", "127.0.0.1:2222", ""}, true},
		{"127.0.0.1:2222=ssh", Forward{"tcp", "127.0.0.1:2222", "ssh"}, true},
		{"udp:127.0.0.1:5353=dns", Forward{"udp", "127.0.0.1:5353", "dns"}, true},
		{"[::1]:0", Forward{"tcp", "[::1]:0", ""}, true},
		{"127.0.0.1:2222=", Forward{}, false},
		{"nonsense", Forward{}, false},
	}
	for _, c := range fws {
		got, err := ParseForward(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseForward(%q) = %+v, %v", c.in, got, err)
		}
	}
	if err := checkServices([]Service{{Network: "tcp", Addr: "a:1"}, {Network: "tcp", Addr: "b:1"}}); err == nil {
		t.Error("two unlabelled tcp services accepted")
	}
	if err := checkServices([]Service{{Network: "tcp", Addr: "a:1"}, {Network: "udp", Addr: "b:1"}}); err != nil {
		t.Errorf("one default per network refused: %v", err)
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add((&request{kind: kindTCP, label: "ssh"}).appendTo(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := parseRequest(b)
		if err != nil {
			return
		}
		if got := r.appendTo(nil); !bytes.Equal(got, b[:n]) {
			t.Fatalf("round trip % x -> % x", b[:n], got)
		}
	})
}
