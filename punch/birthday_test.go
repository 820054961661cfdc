package punch

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ewf-project/ewf/wire"
)

var (
	easyPub = netip.MustParseAddrPort("198.51.100.2:5000")
	hardIP  = netip.MustParseAddr("203.0.113.9")
)

// TestEnablePorts: the hard side sends one request from each extra socket
// to the target, paced, without bursts when ticked late; a request that
// arrives on an extra socket is answered from it, and the path found there
// is on it.
func TestEnablePorts(t *testing.T) {
	m := newA(t, func(c *Config) { c.Candidates = []netip.AddrPort{easyPub} })
	m.Tick(t0)
	if n := m.EnablePorts(300, easyPub, 0, t0); n != MaxPorts {
		t.Fatalf("EnablePorts = %d, want the cap %d", n, MaxPorts)
	}
	if n := m.EnablePorts(3, easyPub, 0, t0); n != 0 {
		t.Fatal("enabled twice")
	}
	var ports []int
	for now := t0; now.Before(t0.Add(time.Second)); now = now.Add(ms) {
		for _, p := range m.Tick(now) {
			if p.Port > 0 {
				if p.To != easyPub {
					t.Fatalf("port request to %v", p.To)
				}
				ports = append(ports, p.Port)
			}
		}
	}
	if len(ports) != MaxPorts || ports[0] != 1 || ports[MaxPorts-1] != MaxPorts || !slices.IsSorted(ports) {
		t.Fatalf("sent from %d ports: %v...", len(ports), ports[:min(5, len(ports))])
	}
	// Late Tick: at most maxBurst/2 at once.
	m2 := newA(t, nil)
	m2.EnablePorts(64, easyPub, 0, t0)
	if out := m2.Tick(t0.Add(time.Second)); len(out) > 2+maxBurst/2 {
		t.Fatalf("late Tick sent %d packets", len(out))
	}
	// A request from the easy side arriving on socket 7 is answered from
	// socket 7; the triggered request's answer there brings the path up.
	out := clonePackets(m.ReceiveOn(fromB(t, wire.ClassRequest, txid(1)), easyPub, 7, t0.Add(time.Second)))
	if len(out) != 2 || out[0].Port != 7 || out[1].Port != 7 || out[0].To != easyPub {
		t.Fatalf("answers %+v", out)
	}
	tx := requestTx(t, out, easyPub)
	// The answer must come back on the socket the request left from.
	m.ReceiveOn(fromB(t, wire.ClassSuccess, tx), easyPub, 8, t0.Add(time.Second+ms))
	if m.State() != Punching {
		t.Fatal("a response on another socket brought the path up")
	}
	m.ReceiveOn(fromB(t, wire.ClassSuccess, tx), easyPub, 7, t0.Add(time.Second+2*ms))
	if addr, _, ok := m.Path(); !ok || addr != easyPub || m.PathPort() != 7 {
		t.Fatalf("path %v on %d, ok %v", addr, m.PathPort(), ok)
	}
	// A socket number beyond the enabled ones is refused.
	m3 := newA(t, nil)
	if out := m3.ReceiveOn(fromB(t, wire.ClassRequest, txid(2)), easyPub, 1, t0); out != nil || m3.Stats().Malformed != 1 {
		t.Fatal("accepted a message on a socket that was never enabled")
	}
}

// TestEnableSpray: the easy side sends its budget to ports of the hard
// side's IP, none below 1024, predicted ones first, paced; a success from
// a guessed port brings the path up there.
func TestEnableSpray(t *testing.T) {
	m := newA(t, func(c *Config) { c.Candidates = []netip.AddrPort{netip.AddrPortFrom(hardIP, 40000)} })
	m.Tick(t0)
	if !m.EnableSpray(Spray{IP: hardIP, Probes: 100, Base: 20000, Delta: 3, Predict: 4}, t0) {
		t.Fatal("spray not enabled")
	}
	var got []uint16
	var lastTx wire.TransactionID
	for now := t0; now.Before(t0.Add(time.Second)); now = now.Add(ms) {
		for _, p := range m.Tick(now) {
			if p.To.Addr() == hardIP && p.To.Port() != 40000 {
				if p.Port != 0 {
					t.Fatal("spray from an extra socket")
				}
				got = append(got, p.To.Port())
				lastTx = decode(t, p.Data).TransactionID
			}
		}
	}
	if len(got) != 100 {
		t.Fatalf("%d probes, budget 100", len(got))
	}
	if !slices.Equal(got[:4], []uint16{20003, 20006, 20009, 20012}) {
		t.Errorf("predicted ports %v", got[:4])
	}
	if slices.ContainsFunc(got, func(p uint16) bool { return p < lowPort }) {
		t.Error("probe below port 1024")
	}
	if st := m.Stats(); st.SprayProbes != 100 {
		t.Errorf("stats %+v", st)
	}
	hit := netip.AddrPortFrom(hardIP, got[99])
	m.Receive(fromB(t, wire.ClassSuccess, lastTx), hit, t0.Add(time.Second))
	if addr, _, ok := m.Path(); !ok || addr != hit || m.PathPort() != 0 || m.Stats().SprayHits != 1 {
		t.Fatalf("path %v ok %v stats %+v", addr, ok, m.Stats())
	}
	if m.EnableSpray(Spray{IP: hardIP}, t0.Add(time.Second)) {
		t.Error("spray enabled on a Connected machine")
	}
}

// birthdayRun simulates one attempt between a hard side (random,
// address-and-port-dependent mapping, port-restricted filtering, ports
// extra sockets) and an easy side (endpoint-independent mapping,
// port-restricted filtering) with oneWay delay between them, and returns
// when the easy side's path came up (or -1).
func birthdayRun(t *testing.T, seed uint64, ports int, oneWay time.Duration) time.Duration {
	rng := rand.New(rand.NewPCG(seed, 7))
	var hardRand, easyRand [wire.TransactionIDSize]byte
	for i := range hardRand {
		hardRand[i], easyRand[i] = byte(rng.Uint32()), byte(rng.Uint32())
	}
	hardBound := netip.AddrPortFrom(hardIP, uint16(1024+rng.IntN(64512)))
	hard, err := New(Config{Self: idA, Peer: idB, Secret: testSecret, Candidates: []netip.AddrPort{easyPub},
		Rand: bytes.NewReader(hardRand[:])}, t0)
	if err != nil {
		t.Fatal(err)
	}
	easy, err := New(Config{Self: idB, Peer: idA, Secret: testSecret, Candidates: []netip.AddrPort{hardBound},
		Rand: bytes.NewReader(easyRand[:])}, t0)
	if err != nil {
		t.Fatal(err)
	}
	hard.EnablePorts(ports, easyPub, 0, t0)
	easy.EnableSpray(Spray{IP: hardIP}, t0)

	// The hard NAT: a random port per (socket, destination); inbound only
	// from that destination. The easy NAT: one port; inbound only from
	// addresses it sent to.
	type hk struct {
		sock int
		dst  netip.AddrPort
	}
	hmap := map[hk]uint16{}
	hrev := map[uint16]hk{}
	easySent := map[netip.AddrPort]bool{}
	type pkt struct {
		at   time.Duration
		toH  bool
		src  netip.AddrPort
		dst  netip.AddrPort
		data []byte
	}
	var q []pkt
	send := func(fromHard bool, ps []Packet, now time.Duration) {
		for _, p := range ps {
			if fromHard {
				k := hk{p.Port, p.To}
				port, ok := hmap[k]
				for !ok {
					port = uint16(1024 + rng.IntN(64512))
					if _, used := hrev[port]; !used {
						ok = true
						hmap[k], hrev[port] = port, k
					}
				}
				q = append(q, pkt{now + oneWay, false, netip.AddrPortFrom(hardIP, port), p.To, slices.Clone(p.Data)})
			} else {
				easySent[p.To] = true
				q = append(q, pkt{now + oneWay, true, easyPub, p.To, slices.Clone(p.Data)})
			}
		}
	}
	for now := time.Duration(0); now < DefaultTimeout; now += ms {
		at := t0.Add(now)
		// Deliver what arrives by now.
		rest := q[:0]
		var due []pkt
		for _, p := range q {
			if p.at <= now {
				due = append(due, p)
			} else {
				rest = append(rest, p)
			}
		}
		q = rest
		for _, p := range due {
			var msg wire.Message
			if msg.Decode(p.data) != nil {
				t.Fatal("undecodable")
			}
			if p.toH {
				k, ok := hrev[p.dst.Port()]
				if !ok || k.dst != p.src {
					continue // hard NAT drops it
				}
				send(true, hard.ReceiveOn(&msg, p.src, k.sock, at), now)
			} else {
				if !easySent[p.src] {
					continue // easy NAT drops it
				}
				send(false, easy.Receive(&msg, p.src, at), now)
			}
		}
		send(true, hard.Tick(at), now)
		send(false, easy.Tick(at), now)
		if easy.State() == Connected {
			return now
		}
	}
	return -1
}

// TestBirthdaySimulated runs the birthday probe between a random
// symmetric NAT and a port-restricted one in a model network with 40 ms
// between the sides: with 256 sockets at least 95 % of attempts must
// connect, with none a control shows it never does.
func TestBirthdaySimulated(t *testing.T) {
	const runs = 60
	var times []time.Duration
	for i := range runs {
		if d := birthdayRun(t, uint64(i), MaxPorts, 40*ms); d >= 0 {
			times = append(times, d)
		}
	}
	slices.Sort(times)
	rate := float64(len(times)) / runs
	med := time.Duration(-1)
	if len(times) > 0 {
		med = times[len(times)/2]
	}
	t.Logf("256 ports: %d/%d connected (%.0f %%), median %v", len(times), runs, 100*rate, med)
	if rate < 0.95 {
		t.Errorf("success rate %.2f, want at least 0.95", rate)
	}
	if d := birthdayRun(t, 1, 0, 40*ms); d >= 0 {
		t.Errorf("connected with only the main socket's mapping (%v; a 3 %% chance that this seed does not draw)", d)
	}
}

// TestHeardPorts: the extra sockets a peer's requests reached, each once.
func TestHeardPorts(t *testing.T) {
	m := newA(t, func(c *Config) { c.Candidates = []netip.AddrPort{easyPub} })
	m.EnablePorts(8, easyPub, 0, t0)
	m.ReceiveOn(fromB(t, wire.ClassRequest, txid(1)), easyPub, 3, t0)
	m.ReceiveOn(fromB(t, wire.ClassRequest, txid(2)), easyPub, 5, t0)
	m.ReceiveOn(fromB(t, wire.ClassRequest, txid(3)), easyPub, 3, t0)
	m.Receive(fromB(t, wire.ClassRequest, txid(4)), easyPub, t0)
	if got := m.HeardPorts(nil); !slices.Equal(got, []int{3, 5}) {
		t.Errorf("HeardPorts = %v, want [3 5]", got)
	}
}

// seqNAT is a model sequential symmetric NAT: each new destination of
// the one inside socket gets the counter's next port (plus delta); inbound
// passes only from the destination a mapping was opened to.
type seqNAT struct {
	ip    netip.Addr
	next  int
	delta int
	out   map[netip.AddrPort]uint16
	in    map[uint16]netip.AddrPort
}

func newSeqNAT(ip netip.Addr, bound uint16, delta, skipped int) *seqNAT {
	return &seqNAT{ip: ip, next: int(bound) + delta*(1+skipped), delta: delta,
		out: map[netip.AddrPort]uint16{}, in: map[uint16]netip.AddrPort{}}
}

func (n *seqNAT) send(to netip.AddrPort) netip.AddrPort {
	p, ok := n.out[to]
	if !ok {
		p = uint16(n.next)
		n.next += n.delta
		n.out[to], n.in[p] = p, to
	}
	return netip.AddrPortFrom(n.ip, p)
}

func (n *seqNAT) pass(from, to netip.AddrPort) bool { d, ok := n.in[to.Port()]; return ok && d == from }

// seqRun simulates one attempt between two sequential symmetric NATs
// (steps deltaA, deltaB) that made offA and offB mappings since the bound
// ports the peers know; the dialer's spray starts skew after the other's.
// It returns when both paths were up, or -1.
func seqRun(t *testing.T, offA, offB, deltaA, deltaB int, skew, oneWay time.Duration) time.Duration {
	ipA, ipB := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("203.0.113.9")
	const boundA, boundB = 20100, 31000
	pubA, pubB := netip.AddrPortFrom(ipA, boundA), netip.AddrPortFrom(ipB, boundB)
	// The first punch request to the peer's bound address is one of the
	// mappings made since: the test's offsets count it.
	natA, natB := newSeqNAT(ipA, boundA, deltaA, offA-1), newSeqNAT(ipB, boundB, deltaB, offB-1)
	a, err := New(Config{Self: idA, Peer: idB, Secret: testSecret, Candidates: []netip.AddrPort{pubB}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Self: idB, Peer: idA, Secret: testSecret, Candidates: []netip.AddrPort{pubA}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	type pkt struct {
		at       time.Duration
		toA      bool
		src, dst netip.AddrPort
		data     []byte
	}
	var q []pkt
	send := func(fromA bool, ps []Packet, now time.Duration) {
		for _, p := range ps {
			if fromA {
				q = append(q, pkt{now + oneWay, false, natA.send(p.To), p.To, slices.Clone(p.Data)})
			} else {
				q = append(q, pkt{now + oneWay, true, natB.send(p.To), p.To, slices.Clone(p.Data)})
			}
		}
	}
	if offA > 0 {
		send(true, a.Tick(t0), 0)
	}
	if offB > 0 {
		send(false, b.Tick(t0), 0)
	}
	startA := false
	for now := time.Duration(0); now < DefaultTimeout; now += ms {
		at := t0.Add(now)
		if !startA && now >= skew {
			startA = true
			a.EnableSpray(Spray{IP: ipB, Base: boundB, Delta: deltaB, Cycle: SeqCycle, Predict: SeqDialerProbes, Probes: SeqDialerProbes}, at)
		}
		if now == 0 {
			b.EnableSpray(Spray{IP: ipA, Base: boundA, Delta: deltaA, Predict: SeqOtherProbes, Probes: SeqOtherProbes}, at)
		}
		var due []pkt
		rest := q[:0]
		for _, p := range q {
			if p.at <= now {
				due = append(due, p)
			} else {
				rest = append(rest, p)
			}
		}
		q = rest
		for _, p := range due {
			var msg wire.Message
			if msg.Decode(p.data) != nil {
				t.Fatal("undecodable")
			}
			if p.toA {
				if natA.pass(p.src, p.dst) {
					send(true, a.Receive(&msg, p.src, at), now)
				}
			} else if natB.pass(p.src, p.dst) {
				send(false, b.Receive(&msg, p.src, at), now)
			}
		}
		if offA > 0 || startA {
			send(true, a.Tick(at), now)
		}
		if offB > 0 || now > 0 {
			send(false, b.Tick(at), now)
		}
		if a.State() == Connected && b.State() == Connected {
			return now
		}
	}
	return -1
}

// TestSequentialPairSimulated: two sequential symmetric NATs meet for
// pairs of offsets whose sum is below SeqCycle, with the dialer starting
// up to 60 ms late, steps 1 and 2; offsets beyond the window do not.
func TestSequentialPairSimulated(t *testing.T) {
	var worst time.Duration
	for _, c := range []struct{ offA, offB, dA, dB int }{
		{1, 1, 1, 1}, {2, 5, 1, 1}, {5, 2, 1, 1}, {1, 9, 1, 2}, {12, 3, 2, 1}, {30, 32, 1, 1}, {61, 1, 1, 1}, {1, 61, 1, 1},
	} {
		for _, skew := range []time.Duration{0, 30 * ms, 60 * ms} {
			d := seqRun(t, c.offA, c.offB, c.dA, c.dB, skew, 20*ms)
			if d < 0 {
				t.Errorf("offsets %d,%d steps %d,%d skew %v: no path", c.offA, c.offB, c.dA, c.dB, skew)
			}
			worst = max(worst, d)
		}
	}
	t.Logf("worst time to both connected: %v", worst)
	// Offsets beyond the window: no path (the test can fail).
	if d := seqRun(t, 40, 40, 1, 1, 0, 20*ms); d >= 0 {
		t.Errorf("offsets 40,40 connected (%v), beyond the window", d)
	}
}
