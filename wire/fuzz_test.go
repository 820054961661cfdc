package wire_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/integrity"
	"github.com/ewf-project/ewf/wire/stunx"
)

// The fuzz targets run their seeds and the corpus committed under
// testdata/fuzz/<target> on every `go test`; `go test -fuzz=^FuzzDecode$
// ./wire` explores further.

func addSeeds(f *testing.F) {
	for _, g := range goldens {
		f.Add(unhex(f, g.hex))
	}
	f.Add(unhex(f, "00010008"+"2112a442"+txHex+"80280004"+"fdf6ae02"))
	f.Add(oversize(wire.MaxMessageSize))
}

// FuzzDecode: Decode never panics; every error is one of the three kinds;
// an accepted message is X to Classify, re-encodes to something that
// decodes to the same message and is no longer than the input (AppendTo
// drops optional attributes and never adds any), and Check never panics.
func FuzzDecode(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var m wire.Message
		err := m.Decode(b)
		if err != nil {
			kinds := 0
			for _, k := range []error{wire.ErrInvalidHeader, wire.ErrInvalidAttributes, wire.ErrUnknownMethod} {
				if errors.Is(err, k) {
					kinds++
				}
			}
			if kinds != 1 {
				t.Fatalf("error %v matches %d kinds", err, kinds)
			}
			if errors.Is(err, wire.ErrInvalidAttributes) && wire.Classify(b) != wire.KindX {
				t.Fatal("attribute error on something Classify does not call X")
			}
			return
		}
		if k := wire.Classify(b); k != wire.KindX {
			t.Fatalf("Decode accepted what Classify calls %v", k)
		}
		if err := m.Check(); err != nil && !errors.Is(err, wire.ErrInvalidAttributes) && !errors.Is(err, wire.ErrUnknownMethod) {
			t.Fatalf("Check error of the wrong kind: %v", err)
		}
		enc := m.AppendTo(nil)
		if len(enc) != m.Len() {
			t.Fatalf("AppendTo wrote %d bytes, Len says %d", len(enc), m.Len())
		}
		if len(enc) > len(b) {
			t.Fatalf("re-encoding grew from %d to %d bytes", len(b), len(enc))
		}
		var m2 wire.Message
		if err := m2.Decode(enc); err != nil {
			t.Fatalf("re-encoding does not decode: %v\nin  %x\nout %x", err, b, enc)
		}
		if !sameMessage(m, m2) {
			t.Fatalf("round trip changed the message\n%+v\n%+v", m, m2)
		}
		if (m.Check() == nil) != (m2.Check() == nil) {
			t.Fatal("Check disagrees on a round-tripped message")
		}
		// The SIGNAL_MAC input of whatever decoded stays within its bound
		// and survives the re-encoding (the server re-encodes SIGNALs).
		in := wire.AppendSignalMACInput(nil, m.SourceID, m.ID, &m)
		if len(in) > wire.MaxSignalMACInput {
			t.Fatalf("SIGNAL_MAC input %d bytes, bound %d", len(in), wire.MaxSignalMACInput)
		}
		if !bytes.Equal(in, wire.AppendSignalMACInput(nil, m2.SourceID, m2.ID, &m2)) {
			t.Fatal("SIGNAL_MAC input changed in the round trip")
		}
	})
}

// FuzzClassify: Classify never panics, looks only at the header, and
// agrees with both decoders: what Decode accepts is X, what the STUN check
// accepts is STUN, and X and STUN are told apart by the leading bits alone.
func FuzzClassify(f *testing.F) {
	addSeeds(f)
	f.Add(unhex(f, "c3"+"00000001"+"08"+"0123456789abcdef"+"08"+"fedcba9876543210"+"00"+"4496"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k := wire.Classify(b)
		if len(b) >= wire.HeaderSize {
			if k2 := wire.Classify(b[:wire.HeaderSize]); k2 != k {
				t.Fatalf("Classify depends on more than the header: %v vs %v", k, k2)
			}
		}
		switch k {
		case wire.KindX:
			if b[0]>>6 != 3 || !stun.IsMessage(b) {
				t.Fatal("X without 11 bits or without the cookie")
			}
		case wire.KindSTUN:
			if b[0]>>6 != 0 || !stun.IsMessage(b) {
				t.Fatal("STUN without 00 bits or without the cookie")
			}
		}
		var m wire.Message
		if m.Decode(b) == nil && k != wire.KindX {
			t.Fatalf("Decode accepted a message Classify calls %v", k)
		}
		if stunx.Check(b) == nil && k != wire.KindSTUN {
			t.Fatalf("stunx.Check accepted a message Classify calls %v", k)
		}
	})
}

// FuzzFramer: on any stream the framer never panics and never loops; it
// returns messages of 20..MaxMessageSize bytes, each of the kind it says
// and as long as its header says, which are exactly the stream's first
// bytes in order; it ends with io.EOF only at a message boundary; and it
// cuts the same way whatever sizes the reads come in.
func FuzzFramer(f *testing.F) {
	all, _ := stream(f)
	f.Add(all)
	f.Add(append(bytes.Clone(all[:60]), 0xff, 0xff, 0xff, 0xff))
	f.Add(oversize(wire.MaxMessageSize + 4))
	addSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		run := func(r io.Reader) ([]byte, error) {
			fr := wire.NewFramer(r)
			var got []byte
			for {
				b, k, err := fr.Next()
				if err != nil {
					if b != nil {
						t.Fatal("a message with an error")
					}
					return got, err
				}
				if len(b) < wire.HeaderSize || len(b) > wire.MaxMessageSize {
					t.Fatalf("message of %d bytes", len(b))
				}
				if wire.MessageLength(b) != len(b) {
					t.Fatalf("message of %d bytes whose header says %d", len(b), wire.MessageLength(b))
				}
				if k == wire.KindOther || wire.Classify(b) != k {
					t.Fatalf("kind %v for a message Classify calls %v", k, wire.Classify(b))
				}
				got = append(got, b...)
			}
		}
		got, err := run(bytes.NewReader(in))
		if !bytes.HasPrefix(in, got) {
			t.Fatal("messages are not the stream's first bytes")
		}
		switch err {
		case io.EOF:
			if len(got) != len(in) {
				t.Fatal("io.EOF before the end of the stream")
			}
		case io.ErrUnexpectedEOF, wire.ErrBadFrame:
			if len(got) == len(in) && err == io.ErrUnexpectedEOF {
				t.Fatal("ErrUnexpectedEOF at a message boundary")
			}
		default:
			t.Fatalf("unexpected error %v", err)
		}
		got2, err2 := run(iotest.OneByteReader(bytes.NewReader(in)))
		if err2 != err || !bytes.Equal(got, got2) {
			t.Fatalf("one-byte reads cut differently: %v vs %v", err, err2)
		}
	})
}

// FuzzIntegrity: TIMESTAMP and MAC parsing and the integrity helpers on
// any input and any key. Verify agrees with crypto/hmac over MACInput
// (and never accepts a message that does not end in an 8-word MAC); a
// message that decodes with TIMESTAMP keeps it through a round trip;
// whatever Sign writes verifies, with that key only; and Restamp, where it
// applies, yields a message that decodes to the new TIMESTAMP and
// verifies.
func FuzzIntegrity(f *testing.F) {
	for _, g := range goldens {
		f.Add(unhex(f, g.hex), testKey[:])
	}
	f.Add(unhex(f, hdr("c003", "0044")+attrID+udp4+"00070008"+macBindReq), testKey[:])
	f.Add(unhex(f, hdr("c003", "0050")+attrID+udp4+attrTimestamp+"00070009"+macBindReq[:56]), []byte{})
	f.Fuzz(func(t *testing.T, b, key []byte) {
		s := integrity.NewSigner()
		in, ok := wire.MACInput(b)
		endsInMAC := ok && binary.BigEndian.Uint16(b[len(in):]) == uint16(wire.AttrMAC) &&
			binary.BigEndian.Uint16(b[len(in)+2:]) == wire.MACSize/4
		want := false
		if endsInMAC {
			h := hmac.New(sha256.New, key)
			h.Write(in)
			want = bytes.Equal(h.Sum(nil), b[len(b)-wire.MACSize:])
		}
		if got := s.Verify(b, key); got != want {
			t.Fatalf("Verify = %v, crypto/hmac says %v", got, want)
		}
		var m wire.Message
		if m.Decode(b) == nil && m.Has(wire.AttrTimestamp) {
			var m2 wire.Message
			if err := m2.Decode(m.AppendTo(nil)); err != nil || m2.Timestamp != m.Timestamp || !m2.Has(wire.AttrTimestamp) {
				t.Fatalf("TIMESTAMP %#x lost in a round trip: %v", m.Timestamp, err)
			}
		}
		c := bytes.Clone(b)
		if s.Sign(c, key) != endsInMAC {
			t.Fatal("Sign disagrees on whether the message ends in a MAC")
		}
		if endsInMAC {
			if !s.Verify(c, key) {
				t.Fatal("signed message does not verify")
			}
			other := append(bytes.Clone(key), 1)
			if s.Verify(c, other) {
				t.Fatal("signed message verifies with another key")
			}
		}
		if s.Restamp(c, 0x0123456789abcdef, key) {
			if !s.Verify(c, key) {
				t.Fatal("restamped message does not verify")
			}
			if m.Decode(b) == nil {
				var r wire.Message
				if err := r.Decode(c); err != nil || r.Timestamp != 0x0123456789abcdef {
					t.Fatalf("restamped message decodes to %v, TIMESTAMP %#x", err, r.Timestamp)
				}
			}
		}
	})
}
