package punch

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// TestAddCandidates: candidates signalled after New are probed at once,
// get their own fast phase, can become the path, and are cleaned,
// de-duplicated and bounded like configured ones.
func TestAddCandidates(t *testing.T) {
	m := newA(t, nil)
	m.Tick(t0)
	lan := netip.MustParseAddrPort("192.168.1.7:4000")
	v6 := netip.MustParseAddrPort("[2001:db8::7]:4000")
	mapped := netip.MustParseAddrPort("[::ffff:192.168.1.8]:4000")
	now := t0.Add(300 * ms)
	n := m.AddCandidates([]netip.AddrPort{lan, v6, mapped, peerAddr, lan, {}, netip.MustParseAddrPort("0.0.0.0:1"),
		netip.MustParseAddrPort("224.0.0.1:1"), netip.MustParseAddrPort("192.168.1.9:0")}, now)
	if n != 3 {
		t.Fatalf("added %d, want 3 (lan, v6, the unmapped IPv4)", n)
	}
	if got := m.Candidates(nil); len(got) != 5 || got[2] != lan || got[3] != v6 || got[4] != netip.MustParseAddrPort("192.168.1.8:4000") {
		t.Fatalf("candidates %v", got)
	}
	if next := m.Next(); next.After(now) {
		t.Fatalf("Next = %v, want at most now (the added ones are due)", next.Sub(t0))
	}
	out := clonePackets(m.Tick(now))
	for _, a := range []netip.AddrPort{lan, v6} {
		if !slices.ContainsFunc(out, func(p Packet) bool { return p.To == a }) {
			t.Errorf("no request to added %v at once: %v", a, out)
		}
	}
	// Fast phase from when it was added: the next one Interval later.
	if next := m.Next(); next.After(now.Add(DefaultInterval)) {
		t.Errorf("next request %v after adding, want within one Interval", next.Sub(now))
	}
	// The added address can become the path.
	tx := requestTx(t, out, lan)
	m.Receive(fromB(t, wire.ClassSuccess, tx), lan, now.Add(2*ms))
	if addr, rtt, ok := m.Path(); !ok || addr != lan || rtt != 2*ms {
		t.Fatalf("path %v rtt %v ok %v", addr, rtt, ok)
	}
	// Connected: nothing more is added.
	if n := m.AddCandidates([]netip.AddrPort{netip.MustParseAddrPort("192.168.1.10:1")}, now.Add(3*ms)); n != 0 {
		t.Errorf("added %d to a Connected machine", n)
	}
	if st := m.Stats(); st.Added != 3 {
		t.Errorf("stats %+v", st)
	}
}

// TestAddCandidatesBounded: configured plus added stay within
// MaxConfigured, leaving room for peer-reflexive ones; the excess is
// counted; a Failed machine takes none.
func TestAddCandidatesBounded(t *testing.T) {
	m := newA(t, nil) // 2 configured
	var many []netip.AddrPort
	for i := range 40 {
		many = append(many, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, 0, byte(i + 1)}), 9))
	}
	if n := m.AddCandidates(many, t0); n != MaxConfigured-2 {
		t.Fatalf("added %d, want %d", n, MaxConfigured-2)
	}
	if st := m.Stats(); st.AddedDropped != uint64(40-(MaxConfigured-2)) {
		t.Errorf("dropped %d", st.AddedDropped)
	}
	// Peer-reflexive slots are still free.
	prflx := netip.MustParseAddrPort("[2001:db8::9]:7000")
	m.Receive(fromB(t, wire.ClassRequest, txid(1)), prflx, t0.Add(ms))
	if got := m.Candidates(nil); got[len(got)-1] != prflx {
		t.Errorf("no room for a peer-reflexive candidate: %v", got)
	}
	f := newA(t, nil)
	f.Tick(t0.Add(DefaultTimeout))
	if n := f.AddCandidates(many[:1], t0.Add(DefaultTimeout)); n != 0 || f.State() != Failed {
		t.Errorf("Failed machine took %d", n)
	}
	// No allocation.
	m2 := newA(t, nil)
	if a := testing.AllocsPerRun(50, func() { m2.AddCandidates(many[:3], t0) }); a != 0 {
		t.Errorf("%v allocations", a)
	}
}
