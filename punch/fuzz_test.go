package punch

import (
	"net/netip"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// FuzzReceive feeds arbitrary datagrams to a Machine that has requests
// outstanding. Whatever the bytes, Receive must not panic, must account for
// every message, and must never come up: the fuzzer does not know the
// secret. The seeds are well-formed PUNCHes under another secret and from
// another sender, so mutations explore the checks past decoding.
func FuzzReceive(f *testing.F) {
	other := testSecret
	other[3] ^= 0x40
	for _, c := range []wire.Class{wire.ClassRequest, wire.ClassSuccess, wire.ClassIndication} {
		f.Add(build(c, txid(1), idB, other))
		f.Add(build(c, txid(2), idOf("mallory"), testSecret))
	}
	f.Add([]byte{})
	from := netip.MustParseAddrPort("198.18.0.66:6666")
	f.Fuzz(func(t *testing.T, b []byte) {
		m := newA(t, nil)
		m.Tick(t0)
		var msg wire.Message
		if msg.Decode(b) != nil {
			return
		}
		out := m.Receive(&msg, from, t0.Add(ms))
		st := m.Stats()
		if st.Received+st.Ignored != 1 {
			t.Fatalf("message counted %d times: %+v", st.Received+st.Ignored, st)
		}
		if st.Received != 0 || out != nil || m.State() != Punching {
			t.Fatalf("accepted %x without the secret: %+v, state %v", b, st, m.State())
		}
	})
}
