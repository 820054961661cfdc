package punch

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ewf-project/ewf/wire"
)

const ms = time.Millisecond

var testSecret = wire.Secret{0x5e, 0xc7, 0xe7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}

// TestOutcomes is the expected-outcome table of the two-Machine network:
// who comes up when, on which path, with which RTT. Times are exact
// because the clock is fake; the default one-way delay is 10 ms, so a
// round trip is 20 ms. A change of behaviour shows up as a diff here.
func TestOutcomes(t *testing.T) {
	type side struct {
		up   time.Duration // -1: never
		path string
		rtt  time.Duration
	}
	tests := []struct {
		name  string
		setup func(s *sim) (a, b *host)
		delay func(from, to *host) time.Duration
		drop  func(f *flight) bool
		a, b  side
		check func(t *testing.T, a, b *host)
	}{{
		name: "direct: both public, started together",
		setup: func(s *sim) (a, b *host) {
			return s.addHost("a", "", nil, "192.0.2.1:4000"), s.addHost("b", "", nil, "192.0.2.2:5000")
		},
		a: side{20 * ms, "192.0.2.2:5000", 20 * ms},
		b: side{20 * ms, "192.0.2.1:4000", 20 * ms},
	}, {
		// B's NAT drops A's packets until B has sent to A (at 30 ms). A's
		// request of 0 ms dies there, the one of 25 ms arrives at 35 ms and
		// passes: A is up at 45. B's first request reaches A at 40, the
		// answer is back at 50.
		name: "restricted peer introduced 30 ms late",
		setup: func(s *sim) (a, b *host) {
			a = s.addHost("a", "", nil, "192.0.2.1:4000")
			b = s.addHost("b", "", newNAT("203.0.113.2", false, true), "10.1.0.2:5000")
			b.start = 30 * ms
			return a, b
		},
		a: side{45 * ms, "203.0.113.2:40000", 20 * ms},
		b: side{50 * ms, "192.0.2.1:4000", 20 * ms},
	}, {
		// Introduced 1 s late, B finds A in its backoff phase (requests at
		// 850 and 1250 ms). B's request reaches A at 1010 ms; A answers and
		// sends a triggered request at once, which now passes B's NAT: A
		// is up at 1030 ms instead of 1270 ms.
		name: "restricted peer introduced 1 s late: triggered request",
		setup: func(s *sim) (a, b *host) {
			a = s.addHost("a", "", nil, "192.0.2.1:4000")
			b = s.addHost("b", "", newNAT("203.0.113.2", false, true), "10.1.0.2:5000")
			b.start = time.Second
			return a, b
		},
		a: side{1030 * ms, "203.0.113.2:40000", 20 * ms},
		b: side{1020 * ms, "192.0.2.1:4000", 20 * ms},
		check: func(t *testing.T, a, b *host) {
			if st := a.m.Stats(); st.Triggered != 1 {
				t.Errorf("a sent %d triggered requests, want 1", st.Triggered)
			}
		},
	}, {
		name: "both port-restricted, started together",
		setup: func(s *sim) (a, b *host) {
			a = s.addHost("a", "", newNAT("198.51.100.1", false, true), "10.0.0.1:4000")
			b = s.addHost("b", "", newNAT("203.0.113.2", false, true), "10.1.0.2:5000")
			return a, b
		},
		a: side{20 * ms, "203.0.113.2:40000", 20 * ms},
		b: side{20 * ms, "198.51.100.1:40000", 20 * ms},
	}, {
		name: "both port-restricted, B introduced 30 ms late",
		setup: func(s *sim) (a, b *host) {
			a = s.addHost("a", "", newNAT("198.51.100.1", false, true), "10.0.0.1:4000")
			b = s.addHost("b", "", newNAT("203.0.113.2", false, true), "10.1.0.2:5000")
			b.start = 30 * ms
			return a, b
		},
		a: side{45 * ms, "203.0.113.2:40000", 20 * ms},
		b: side{50 * ms, "198.51.100.1:40000", 20 * ms},
	}, {
		// A's symmetric NAT gives its packets to B a new port (40001),
		// which A never advertised. B answers there and learns it as a
		// peer-reflexive candidate; B's own requests to A's advertised
		// port die at A's NAT, so B comes up only through the triggered
		// request to 40001.
		name: "symmetric peer: peer-reflexive candidate",
		setup: func(s *sim) (a, b *host) {
			a = s.addHost("a", "", newNAT("198.51.100.1", true, true), "10.0.0.1:4000")
			b = s.addHost("b", "", nil, "192.0.2.2:5000")
			return a, b
		},
		a: side{20 * ms, "192.0.2.2:5000", 20 * ms},
		b: side{30 * ms, "198.51.100.1:40001", 20 * ms},
		check: func(t *testing.T, a, b *host) {
			if st := b.m.Stats(); st.Reflexive != 1 {
				t.Errorf("b learned %d peer-reflexive candidates, want 1", st.Reflexive)
			}
			got := b.m.Candidates(nil)
			if want := netip.MustParseAddrPort("198.51.100.1:40001"); got[len(got)-1] != want {
				t.Errorf("b candidates %v, want %v last", got, want)
			}
		},
	}, {
		name: "symmetric vs port-restricted: no direct path, Failed at Timeout",
		setup: func(s *sim) (a, b *host) {
			a = s.addHost("a", "", newNAT("198.51.100.1", true, true), "10.0.0.1:4000")
			b = s.addHost("b", "", newNAT("203.0.113.2", false, true), "10.1.0.2:5000")
			return a, b
		},
		a: side{up: -1},
		b: side{up: -1},
	}, {
		name: "both symmetric: Failed at Timeout",
		setup: func(s *sim) (a, b *host) {
			a = s.addHost("a", "", newNAT("198.51.100.1", true, true), "10.0.0.1:4000")
			b = s.addHost("b", "", newNAT("203.0.113.2", true, true), "10.1.0.2:5000")
			return a, b
		},
		a: side{up: -1},
		b: side{up: -1},
	}, {
		// One NAT without hairpinning: the public candidates go nowhere,
		// the host candidates work.
		name: "same NAT, no hairpinning: host candidates",
		setup: func(s *sim) (a, b *host) {
			nat := newNAT("198.51.100.1", false, true)
			a = s.addHost("a", "home", nat, "192.168.1.10:4000")
			b = s.addHost("b", "home", nat, "192.168.1.20:5000")
			return a, b
		},
		a: side{20 * ms, "192.168.1.20:5000", 20 * ms},
		b: side{20 * ms, "192.168.1.10:4000", 20 * ms},
	}, {
		name: "dual stack, IPv4 black-holed: IPv6 candidate",
		setup: func(s *sim) (a, b *host) {
			a = s.addHost("a", "", nil, "192.0.2.1:4000", "[2001:db8::1]:4000")
			b = s.addHost("b", "", nil, "192.0.2.2:5000", "[2001:db8::2]:5000")
			return a, b
		},
		drop: func(f *flight) bool { return f.dst.Addr().Is4() },
		a:    side{20 * ms, "[2001:db8::2]:5000", 20 * ms},
		b:    side{20 * ms, "[2001:db8::1]:4000", 20 * ms},
	}, {
		// Everything sent before 100 ms is lost; the requests of the
		// 100 ms round get through.
		name: "link down for 100 ms: the fast schedule recovers",
		setup: func(s *sim) (a, b *host) {
			return s.addHost("a", "", nil, "192.0.2.1:4000"), s.addHost("b", "", nil, "192.0.2.2:5000")
		},
		drop: func(f *flight) bool { return f.sentAt < 100*ms },
		a:    side{120 * ms, "192.0.2.2:5000", 20 * ms},
		b:    side{120 * ms, "192.0.2.1:4000", 20 * ms},
	}, {
		name: "asymmetric delay 30 ms / 50 ms: RTT 80 ms on both sides",
		setup: func(s *sim) (a, b *host) {
			return s.addHost("a", "", nil, "192.0.2.1:4000"), s.addHost("b", "", nil, "192.0.2.2:5000")
		},
		delay: func(from, to *host) time.Duration {
			if from.name == "a" {
				return 30 * ms
			}
			return 50 * ms
		},
		a: side{80 * ms, "192.0.2.2:5000", 80 * ms},
		b: side{80 * ms, "192.0.2.1:4000", 80 * ms},
	}, {
		name: "nothing gets through: Failed at Timeout",
		setup: func(s *sim) (a, b *host) {
			return s.addHost("a", "", nil, "192.0.2.1:4000"), s.addHost("b", "", nil, "192.0.2.2:5000")
		},
		drop: func(*flight) bool { return true },
		a:    side{up: -1},
		b:    side{up: -1},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &sim{t: t, delay: tt.delay, drop: tt.drop}
			a, b := tt.setup(s)
			s.introduce(a, b, testSecret)
			s.run(time.Minute)
			for _, c := range []struct {
				h    *host
				want side
			}{{a, tt.a}, {b, tt.b}} {
				h, want := c.h, c.want
				addr, rtt, ok := h.m.Path()
				if want.up < 0 {
					if ok || h.m.State() != Failed {
						t.Errorf("%s: state %v path %v, want failed", h.name, h.m.State(), addr)
					}
					if wantFail := h.start + DefaultTimeout; h.failAt != wantFail {
						t.Errorf("%s: failed at %v, want %v", h.name, h.failAt, wantFail)
					}
				} else {
					if !ok || h.upAt != want.up {
						t.Errorf("%s: state %v up at %v, want connected at %v", h.name, h.m.State(), h.upAt, want.up)
					}
					if addr.String() != want.path || rtt != want.rtt {
						t.Errorf("%s: path %v rtt %v, want %v rtt %v", h.name, addr, rtt, want.path, want.rtt)
					}
				}
				// Every delivered message is accounted for exactly once.
				st := h.m.Stats()
				if got := int(st.Received + st.Ignored); got != h.delivered {
					t.Errorf("%s: received %d + ignored %d != delivered %d", h.name, st.Received, st.Ignored, h.delivered)
				}
				if st.Sent != st.Requests+st.Responses {
					t.Errorf("%s: Sent %d != Requests %d + Responses %d", h.name, st.Sent, st.Requests, st.Responses)
				}
				if st.BadMAC+st.WrongPeer+st.Malformed != 0 {
					t.Errorf("%s: honest traffic was rejected: %+v", h.name, st)
				}
			}
			if tt.check != nil {
				tt.check(t, a, b)
			}
		})
	}
}
