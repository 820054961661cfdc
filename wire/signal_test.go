package wire_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// SIGNAL vectors (docs/PROTOCOL.md §20). The SIGNAL_MACs were computed
// outside Go from the MAC input written out by hand in TestSignalMACInput:
//
//	xxd -r -p <<< "$INPUT_HEX" | openssl dgst -sha256 -mac HMAC -macopt hexkey:303132…3f
const (
	relayed6    = "000b0005" + "0002a147" + "0113a9faa5d3f179bc25f4b5bed2b9d9" // RELAYED udp [2001:db8:…]:32853
	sigMAC      = "1fb2d91c6d0353312858c44ae94b513d2da0111a1b6beddc1dbddba0b42a2466"
	sigMACEmpty = "c04f2ed9fe64dcbc12d615f347782fea0eb3c67492f9b2a587438c5878a42d0a"
	// sigMACRefused is the SIGNAL_MAC of a SIGNAL that carries only
	// REFUSED (not on the allow list): HMAC of sigInputRefused.
	sigMACRefused = "2ddc9b36cfaee8f1f78796bee530445cbd9638ec8a6ca492a299a07226d46d9e"

	// The MAC input of a SIGNAL from SOURCE_ID 2021…2f to ID 0001…0f with
	// CANDIDATE udp/192.0.2.1:32853 and RELAYED udp/[2001:db8:…]:32853:
	// label, from, to, then each address in clear.
	sigInput = "657766205349474e414c204d41432031" + // "ewf SIGNAL MAC 1"
		srcHex + idHex +
		"0006" + "00" + "01" + "8055" + "c0000201" +
		"000b" + "00" + "02" + "8055" + "20010db8123456780011223344556677"
)

// sigInputRefused is the MAC input of a SIGNAL from 2021…2f to 0001…0f
// that carries REFUSED (reason 0x10) and nothing else.
const sigInputRefused = "657766205349474e414c204d41432031" + srcHex + idHex + "0012" + "00000010"

func withRefused(m *wire.Message) { m.SetRefused(wire.ReasonRefused) }

func withRelayed(a wire.Address) func(*wire.Message) {
	return func(m *wire.Message) {
		if err := m.AddRelayed(a); err != nil {
			panic(err)
		}
	}
}

func withSignalMAC(m *wire.Message) { withSignalMACOf(sigMAC)(m) }

func withSignalMACOf(h string) func(*wire.Message) {
	return func(m *wire.Message) { m.SetSignalMAC([wire.MACSize]byte(mustHex(h))) }
}

// TestSignalMACInput checks the canonical MAC input against the bytes
// written by hand, and the vectors' SIGNAL_MAC against HMAC-SHA256 of it:
// the sender's request and the indication the receiver gets (other
// transaction ID, no ID or KEY) give the same input.
func TestSignalMACInput(t *testing.T) {
	want := unhex(t, sigInput)
	for _, name := range []string{"signal-request", "signal-indication"} {
		var m wire.Message
		for _, g := range goldens {
			if g.name == name {
				m = g.want
			}
		}
		m.TransactionID = wire.TransactionID{9, 9, 9} // the server picks a fresh one
		prefix := []byte("keep")
		got := wire.AppendSignalMACInput(append([]byte(nil), prefix...), testSrc, testID, &m)
		if !bytes.Equal(got[:len(prefix)], prefix) || !bytes.Equal(got[len(prefix):], want) {
			t.Fatalf("%s: input\n%x\nwant\n%x", name, got[len(prefix):], want)
		}
		h := hmac.New(sha256.New, testSec[:])
		h.Write(got[len(prefix):])
		if sum := h.Sum(nil); !bytes.Equal(sum, m.SignalMAC[:]) {
			t.Fatalf("%s: HMAC %x, want SIGNAL_MAC %x", name, sum, m.SignalMAC)
		}
	}
	// Direction and peers are covered: the same attributes from the other
	// side, or to someone else, give another input.
	var m wire.Message
	base := wire.AppendSignalMACInput(nil, testSrc, testID, &m)
	if bytes.Equal(base, wire.AppendSignalMACInput(nil, testID, testSrc, &m)) {
		t.Error("input does not depend on the direction")
	}
	if len(base) != 48 {
		t.Errorf("empty input is %d bytes, want 48", len(base))
	}
}

// TestRefusedSignal: REFUSED is covered by SIGNAL_MAC (the input written
// by hand, the MAC computed outside Go, as for sigMAC), survives the
// server's copy into the indication, and is part of the MAC input, so
// that no one without the SECRET can add it to a SIGNAL or strip it off.
func TestRefusedSignal(t *testing.T) {
	var req wire.Message
	for _, g := range goldens {
		if g.name == "signal-request-refused" {
			req = g.want
		}
	}
	if !req.Has(wire.AttrRefused) || req.Refused != wire.ReasonRefused {
		t.Fatalf("golden request lacks REFUSED: %+v", req)
	}
	var ind wire.Message
	ind.CopySignalled(&req)
	if !ind.Has(wire.AttrRefused) || ind.Refused != wire.ReasonRefused {
		t.Fatal("CopySignalled dropped REFUSED")
	}
	in := wire.AppendSignalMACInput(nil, testSrc, testID, &ind)
	if want := unhex(t, sigInputRefused); !bytes.Equal(in, want) {
		t.Fatalf("MAC input\n%x\nwant\n%x", in, want)
	}
	h := hmac.New(sha256.New, testSec[:])
	h.Write(in)
	if sum := h.Sum(nil); !bytes.Equal(sum, mustHex(sigMACRefused)) {
		t.Fatalf("HMAC %x, want %s", sum, sigMACRefused)
	}
	var stripped wire.Message
	if bytes.Equal(wire.AppendSignalMACInput(nil, testSrc, testID, &stripped), in) {
		t.Error("REFUSED is not in the MAC input")
	}
	if wire.AttrRefused.String() != "REFUSED" || wire.ReasonRefused.String() != "refused by the peer" {
		t.Errorf("names %q, %q", wire.AttrRefused, wire.ReasonRefused)
	}
	// A REFUSED of the wrong length is invalid attributes.
	bad := unhex(t, hdr("c017", "0044")+attrSource+"00120002"+"0000001000000000"+"000c0008"+sigMACRefused)
	var m wire.Message
	if err := m.Decode(bad); !errors.Is(err, wire.ErrInvalidAttributes) {
		t.Errorf("REFUSED of 2 words: %v", err)
	}
}

// TestSignalMACInputBound: the largest message fits MaxSignalMACInput and
// appending into a buffer of that capacity does not allocate.
func TestSignalMACInputBound(t *testing.T) {
	var m wire.Message
	for range wire.MaxCandidates {
		if err := m.AddCandidate(udpAddr6); err != nil {
			t.Fatal(err)
		}
	}
	for range wire.MaxRelayed {
		if err := m.AddRelayed(udpAddr6); err != nil {
			t.Fatal(err)
		}
	}
	m.SetNATClass(wire.MakeNATClass(3, 3, 3, 0, 0))
	m.SetRefused(wire.ReasonRefused)
	var buf [wire.MaxSignalMACInput]byte
	if n := len(wire.AppendSignalMACInput(buf[:0], testSrc, testID, &m)); n != wire.MaxSignalMACInput {
		t.Errorf("largest input %d bytes, MaxSignalMACInput %d", n, wire.MaxSignalMACInput)
	}
	if a := testing.AllocsPerRun(100, func() { wire.AppendSignalMACInput(buf[:0], testSrc, testID, &m) }); a != 0 {
		t.Errorf("%v allocations", a)
	}
}

func TestRelayedLimits(t *testing.T) {
	var m wire.Message
	for range wire.MaxRelayed {
		if err := m.AddRelayed(udpAddr4); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.AddRelayed(udpAddr4); !errors.Is(err, wire.ErrTooManyRelayed) {
		t.Errorf("third RELAYED: %v, want ErrTooManyRelayed", err)
	}
	if err := m.AddRelayed(wire.Address{}); !errors.Is(err, wire.ErrBadAddress) {
		t.Errorf("invalid RELAYED: %v, want ErrBadAddress", err)
	}
	// On the wire: a third RELAYED is invalid attributes.
	b := unhex(t, hdr("c017", "005c")+attrSource+relayed6+relayed6+relayed6)
	var d wire.Message
	if err := d.Decode(b); !errors.Is(err, wire.ErrInvalidAttributes) {
		t.Errorf("Decode with 3 RELAYED: %v, want ErrInvalidAttributes", err)
	}
	// CopySignalled carries exactly the signalled attributes.
	var src, dst wire.Message
	src.SetID(testID)
	src.SetKey(testKey)
	_ = src.AddCandidate(udpAddr4)
	_ = src.AddRelayed(udpAddr6)
	dst.CopySignalled(&src)
	if dst.Has(wire.AttrID) || dst.Has(wire.AttrKey) || dst.NumCandidates != 1 || dst.NumRelayed != 1 ||
		dst.Candidates[0] != udpAddr4 || dst.Relayed[0] != udpAddr6 {
		t.Errorf("CopySignalled = %+v", dst)
	}
}
