package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"testing/iotest"
	"time"

	"go.uber.org/goleak"

	"github.com/ewf-project/ewf/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stream is every golden X message and a STUN Binding request, back to
// back, as a client on TCP would send them.
func stream(t testing.TB) ([]byte, [][]byte) {
	t.Helper()
	var all []byte
	var msgs [][]byte
	for _, g := range goldens {
		b := unhex(t, g.hex)
		msgs = append(msgs, b)
		all = append(all, b...)
	}
	stun := unhex(t, "00010008"+"2112a442"+txHex+"80280004"+"fdf6ae02")
	msgs = append(msgs, stun)
	return append(all, stun...), msgs
}

// oversize returns an X message of total size n whose body is one
// comprehension-optional attribute.
func oversize(n int) []byte {
	b := make([]byte, n)
	copy(b, []byte{0xc0, 0x02, 0, 0, 0x21, 0x12, 0xa4, 0x42})
	binary.BigEndian.PutUint16(b[2:4], uint16(n-wire.HeaderSize))
	binary.BigEndian.PutUint16(b[20:22], 0x8000)
	binary.BigEndian.PutUint16(b[22:24], uint16((n-wire.HeaderSize-4)/4))
	return b
}

func readAll(t *testing.T, r io.Reader) ([][]byte, []wire.Kind, error) {
	t.Helper()
	f := wire.NewFramer(r)
	var msgs [][]byte
	var kinds []wire.Kind
	for {
		b, k, err := f.Next()
		if err != nil {
			return msgs, kinds, err
		}
		msgs = append(msgs, bytes.Clone(b))
		kinds = append(kinds, k)
	}
}

func TestFramerBackToBack(t *testing.T) {
	all, want := stream(t)
	for _, c := range []struct {
		name string
		r    func() io.Reader
	}{
		{"whole", func() io.Reader { return bytes.NewReader(all) }},
		{"one byte at a time", func() io.Reader { return iotest.OneByteReader(bytes.NewReader(all)) }},
		{"half reads", func() io.Reader { return iotest.HalfReader(bytes.NewReader(all)) }},
		{"EOF with the last data", func() io.Reader { return iotest.DataErrReader(bytes.NewReader(all)) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, kinds, err := readAll(t, c.r())
			if err != io.EOF {
				t.Fatalf("end: %v, want io.EOF", err)
			}
			if len(got) != len(want) {
				t.Fatalf("%d messages, want %d", len(got), len(want))
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("message %d: %x, want %x", i, got[i], want[i])
				}
				wantKind := wire.KindX
				if i == len(want)-1 {
					wantKind = wire.KindSTUN
				}
				if kinds[i] != wantKind {
					t.Fatalf("message %d: kind %v, want %v", i, kinds[i], wantKind)
				}
			}
		})
	}
}

func TestFramerSizeLimit(t *testing.T) {
	max := oversize(wire.MaxMessageSize)
	got, _, err := readAll(t, bytes.NewReader(max))
	if err != io.EOF || len(got) != 1 || !bytes.Equal(got[0], max) {
		t.Fatalf("a %d-byte message: %d messages, %v", wire.MaxMessageSize, len(got), err)
	}
	var m wire.Message
	if err := m.Decode(max); err != nil {
		t.Fatalf("Decode of a MaxMessageSize message: %v", err)
	}
	// One word more is refused from the header alone, before its body is
	// read: the connection is closed without buffering it.
	big := oversize(wire.MaxMessageSize + 4)
	f := wire.NewFramer(io.MultiReader(bytes.NewReader(big[:wire.HeaderSize]), iotest.ErrReader(errors.New("body must not be read"))))
	if _, _, err := f.Next(); err != wire.ErrBadFrame {
		t.Fatalf("oversize frame: %v, want ErrBadFrame", err)
	}
	// The largest length a header can state.
	huge := append([]byte{0x00, 0x01, 0xff, 0xfc}, big[4:wire.HeaderSize]...)
	if _, _, err := wire.NewFramer(bytes.NewReader(huge)).Next(); err != wire.ErrBadFrame {
		t.Fatalf("65532-byte STUN frame: %v, want ErrBadFrame", err)
	}
}

func TestFramerErrors(t *testing.T) {
	all, msgs := stream(t)
	first := msgs[0]
	for _, c := range []struct {
		name  string
		in    []byte
		nmsgs int
		want  error
	}{
		{"empty stream", nil, 0, io.EOF},
		{"ends inside a header", first[:7], 0, io.ErrUnexpectedEOF},
		{"ends inside a body", first[:len(first)-1], 0, io.ErrUnexpectedEOF},
		{"ends inside the second message", all[:len(first)+21], 1, io.ErrUnexpectedEOF},
		{"junk first", append([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), all...), 0, wire.ErrBadFrame},
		{"junk after a message", append(bytes.Clone(first), bytes.Repeat([]byte{0x17}, 40)...), 1, wire.ErrBadFrame},
		{"TLS record", append([]byte{0x16, 0x03, 0x01, 0x02, 0x00}, make([]byte, 40)...), 0, wire.ErrBadFrame},
		{"length not a multiple of 4", append(unhex(t, hdr("c002", "0013")), make([]byte, 19)...), 0, wire.ErrBadFrame},
		{"wrong cookie", append(unhex(t, "c0020000"+"2112a443"+txHex), all...), 0, wire.ErrBadFrame},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, _, err := readAll(t, bytes.NewReader(c.in))
			if err != c.want {
				t.Fatalf("end: %v, want %v", err, c.want)
			}
			if len(got) != c.nmsgs {
				t.Fatalf("%d messages before the error, want %d", len(got), c.nmsgs)
			}
		})
	}
	// A read error is returned as it is.
	boom := errors.New("boom")
	_, _, err := readAll(t, io.MultiReader(bytes.NewReader(first), iotest.ErrReader(boom)))
	if err != boom {
		t.Fatalf("read error: %v, want boom", err)
	}
}

// TestFramerTCP runs the framer on a real loopback TCP connection: the
// peer writes the stream in uneven pieces, and a read deadline surfaces as
// os.ErrDeadlineExceeded, which the server treats as an idle connection.
func TestFramerTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	all, want := stream(t)
	done := make(chan error, 1)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		for p, n := all, 1; len(p) > 0; n = n%97 + 13 {
			n := min(n, len(p))
			if _, err := c.Write(p[:n]); err != nil {
				done <- err
				return
			}
			p = p[n:]
		}
		// Keep the connection open until the reader has timed out.
		_, err = c.Read(make([]byte, 1))
		if err == io.EOF {
			err = nil
		}
		done <- err
	}()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	f := wire.NewFramer(conn)
	for i := range want {
		b, _, err := f.Next()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(b, want[i]) {
			t.Fatalf("message %d differs", i)
		}
	}
	if err := conn.SetReadDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.Next(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle connection: %v, want a deadline error", err)
	}
	conn.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestFramerReset: after a bad stream, Reset gives a clean framer on the
// next one, with nothing left over from the first.
func TestFramerReset(t *testing.T) {
	all, msgs := stream(t)
	f := wire.NewFramer(bytes.NewReader(append(bytes.Clone(msgs[0][:30]), 0xff)))
	if _, _, err := f.Next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("first stream: %v", err)
	}
	f.Reset(bytes.NewReader(all))
	for i := range msgs {
		b, _, err := f.Next()
		if err != nil || !bytes.Equal(b, msgs[i]) {
			t.Fatalf("after Reset, message %d: %v", i, err)
		}
	}
	if _, _, err := f.Next(); err != io.EOF {
		t.Fatalf("after Reset, end: %v", err)
	}
}
