package punch

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// Birthday probing, for a peer behind a NAT that maps every destination
// to a new port (address-and-port-dependent mapping) while this side's
// mapping is endpoint-independent, or the other way round (docs/
// PROTOCOL.md §20.6, the analysis of Tailscale's "How NAT traversal works"):
//
//   - The hard side (EnablePorts) sends a request from each of up to
//     MaxPorts extra sockets, which the driver opens, to the easy side's
//     public address. Each opens a mapping on its NAT, at a port nobody
//     can predict, that lets the easy side's address in.
//   - The easy side (EnableSpray) sends requests to random ports of the
//     hard side's public address. Its NAT maps them all to its one public
//     address (that is what endpoint-independent means), so a request
//     that lands on one of the hard side's open mappings gets through, is
//     answered from there, and the path is up.
//
// With 256 mappings among 64,512 ports, each request hits with probability
// 1/252; 1,024 requests hit at least once with probability 98.3 %, 2,048
// with 99.97 %; the budget is 4,096, so that a spray that began before the
// hard side's mappings were all open, or was slowed by a loaded host,
// still gets its chances. When discovery found a sequential allocation (the next
// mapping is the last one plus Delta), the easy side first tries the
// predicted ports.
//
// Pacing: requests go out one per interval (DefaultPortInterval,
// DefaultSprayInterval: 2 ms, 500 packets of 76 bytes per second, 38 kB/s),
// never more than maxBurst/2 of each kind in one Tick however late it is
// called, and the spray stops at its budget. The easy side's NAT makes no
// new mapping for them (it is endpoint-independent), only short-lived
// filter state, so the spray cannot exhaust a carrier NAT's port block;
// the hard side makes at most MaxPorts mappings per attempt, well inside
// the port blocks carriers give a subscriber (commonly 512 to 4,096), and
// its driver closes the sockets when the attempt ends. Every probe is an
// ordinary MAC-authenticated PUNCH request aimed at one address that asked
// for it through the server, for at most a few seconds.

// Birthday limits and defaults.
const (
	// MaxPorts bounds the extra sockets of one attempt.
	MaxPorts = 256
	// DefaultPortInterval paces the hard side's first requests: 256 in
	// about half a second.
	DefaultPortInterval = 2 * time.Millisecond
	// DefaultSprayInterval paces the easy side's requests.
	DefaultSprayInterval = 2 * time.Millisecond
	// DefaultSprayProbes is the easy side's budget per attempt: 8 s of
	// spraying at the default pace, inside the 10 s punch timeout.
	DefaultSprayProbes = 4096
	// MaxSprayProbes caps the budget.
	MaxSprayProbes = 4096
	// maxBurst bounds the birthday requests of one Tick.
	maxBurst = 16
	// sprayCand marks a birthday request in the outstanding ring.
	sprayCand = 0xFF
	// lowPort is the first port a NAT hands out; the spray skips the
	// ports below it.
	lowPort = 1024
	// maxPredict bounds the predicted ports tried first.
	maxPredict = 128
)

type birthday struct {
	rng rand.PCG

	ports        int // extra sockets 1..ports
	portTarget   netip.AddrPort
	portSent     int
	portAt       time.Time
	portInterval time.Duration

	sprayIP       netip.Addr
	sprayLeft     int
	sprayAt       time.Time
	sprayInterval time.Duration
	base          uint16 // sequential prediction: last known mapping
	delta         int
	cycle         int
	predictLeft   int
	k             int
}

func (b *birthday) seed(s [wire.TransactionIDSize]byte) {
	b.rng.Seed(binary.BigEndian.Uint64(s[:8]), uint64(binary.BigEndian.Uint32(s[8:]))|1<<40)
}

// next returns when a birthday request is due, or the zero time.
func (b *birthday) next() time.Time {
	var t time.Time
	if b.portSent < b.ports {
		t = b.portAt
	}
	if b.sprayLeft > 0 && (t.IsZero() || b.sprayAt.Before(t)) {
		t = b.sprayAt
	}
	return t
}

// EnablePorts makes this side the hard side of birthday probing: from now,
// one request every interval (zero: DefaultPortInterval) leaves each extra
// socket 1..n (Packet.Port), which the driver has opened, for target, the
// peer's public address. A request that arrives on an extra socket is
// answered from it, and a path found there has PathPort() == that socket.
// n is capped at MaxPorts; it returns the n used (0 unless Punching or if
// already enabled).
func (m *Machine) EnablePorts(n int, target netip.AddrPort, interval time.Duration, now time.Time) int {
	target = unmap(target)
	if !m.live(now) || m.bday.ports > 0 || n <= 0 || !usable(target) {
		return 0
	}
	b := &m.bday
	b.ports = min(n, MaxPorts)
	b.portTarget = target
	b.portAt = now
	b.portInterval = or(interval, DefaultPortInterval)
	return b.ports
}

// Spray configures the easy side of birthday probing.
type Spray struct {
	// IP is the hard side's public address.
	IP netip.Addr
	// Probes is the budget of requests; zero means DefaultSprayProbes, at
	// most MaxSprayProbes.
	Probes int
	// Interval paces them; zero means DefaultSprayInterval.
	Interval time.Duration
	// Base and Delta, with Delta non-zero, predict the hard side's next
	// mappings (a sequential allocation): Base+Delta, Base+2·Delta, … are
	// tried first, up to Predict of them (zero: 32, at most 128), before
	// random ports.
	Base    uint16
	Delta   int
	Predict int
	// Cycle, when positive (and odd), skews the prediction for two
	// sequential NATs (see seqWindow): the k-th predicted port is
	// Base+(k+k mod Cycle)·Delta.
	Cycle int
}

// Two sequential NATs (docs/PROTOCOL.md §20.6): every request to a new
// port opens a new mapping on the sender's own NAT too, at the next port
// of its counter, so the two sides' probes form a grid and only a
// request whose source and destination both match a mapping the other
// side opened gets through. Each side knows the other's last bound port
// (the server saw it), but not how many mappings each NAT made since
// (discovery, the first punch requests, other hosts): offA and offB. The
// dialer (side A) sends its i-th request (from its port pA+(offA+i)·δA)
// to pB+(i+i mod K)·δB; the other side (B) sends its j-th (from
// pB+(offB+j)·δB) to pA+j·δA. A's i-th and B's j-th meet when j = offA+i
// and i mod K = offA+offB: for any offA+offB < K, some i ≤ K of A's finds
// B's j = offA+i ≤ M. With K odd, A's destinations never repeat (a
// repeat would reuse a mapping and break A's count). SeqCycle is K;
// SeqDialerProbes and SeqOtherProbes are A's and B's counts: offsets up
// to 62 in total, up to 65 on the dialer's side, at 2 ms a request
// 0.26 s of probing, and at most 128 new mappings on each NAT.
const (
	SeqCycle        = 63
	SeqDialerProbes = SeqCycle
	SeqOtherProbes  = maxPredict
)

// EnableSpray makes this side the easy side of birthday probing: from now,
// one request every s.Interval from the main socket to a port of s.IP,
// predicted or random (never below 1024), until the budget is spent or the
// path is up. It reports whether the spray was started (not when already
// started, not Punching, or with an unusable IP).
func (m *Machine) EnableSpray(s Spray, now time.Time) bool {
	ip := s.IP.Unmap()
	if !m.live(now) || m.bday.sprayLeft > 0 || !ip.IsValid() || ip.IsUnspecified() || ip.IsMulticast() {
		return false
	}
	b := &m.bday
	b.sprayIP = ip
	b.sprayLeft = min(max(s.Probes, 0), MaxSprayProbes)
	if b.sprayLeft == 0 {
		b.sprayLeft = DefaultSprayProbes
	}
	b.sprayInterval = or(s.Interval, DefaultSprayInterval)
	b.sprayAt = now
	if s.Delta != 0 {
		b.base, b.delta = s.Base, s.Delta
		b.predictLeft = min(max(s.Predict, 0), maxPredict)
		if b.predictLeft == 0 {
			b.predictLeft = 32
		}
		b.k = 0
		b.cycle = max(s.Cycle, 0)
	}
	return true
}

// tickBirthday sends the birthday requests due at now.
func (m *Machine) tickBirthday(now time.Time) {
	b := &m.bday
	for sent := 0; b.portSent < b.ports && !now.Before(b.portAt) && sent < maxBurst/2; sent++ {
		b.portSent++
		m.probe(b.portTarget, b.portSent, now)
		m.stats.PortProbes++
		b.portAt = b.portAt.Add(b.portInterval)
	}
	if b.portSent < b.ports && now.Sub(b.portAt) > b.portInterval {
		b.portAt = now // called late: no burst of the missed ones
	}
	for sent := 0; b.sprayLeft > 0 && !now.Before(b.sprayAt) && sent < maxBurst/2; sent++ {
		b.sprayLeft--
		m.probe(netip.AddrPortFrom(b.sprayIP, b.nextPort()), 0, now)
		m.stats.SprayProbes++
		b.sprayAt = b.sprayAt.Add(b.sprayInterval)
	}
	if b.sprayLeft > 0 && now.Sub(b.sprayAt) > b.sprayInterval {
		b.sprayAt = now
	}
}

// nextPort returns the next predicted port, or a random one.
func (b *birthday) nextPort() uint16 {
	for b.predictLeft > 0 {
		b.predictLeft--
		b.k++
		step := b.k
		if b.cycle > 0 {
			step += b.k % b.cycle
		}
		p := int(b.base) + step*b.delta
		if p >= lowPort && p <= 0xFFFF {
			return uint16(p)
		}
	}
	return uint16(lowPort + b.rng.Uint64()%(0x10000-lowPort))
}

// probe sends a fresh request to to from local socket port, outside the
// candidate schedules.
func (m *Machine) probe(to netip.AddrPort, port int, now time.Time) {
	m.seq++
	var tx wire.TransactionID
	copy(tx[:8], m.prefix[:])
	binary.BigEndian.PutUint32(tx[8:], m.seq)
	m.ring[m.seq%OutstandingWindow] = outstanding{
		seq: m.seq, status: txOutstanding, cand: sprayCand, port: uint16(port), at: now.Sub(m.start),
	}
	m.emit(to, port, wire.ClassRequest, tx)
	m.stats.Requests++
}
