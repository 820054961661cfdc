package ewf

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"

	"github.com/ewf-project/ewf/punch"
	"github.com/ewf-project/ewf/wire"
)

// A relayed connection moves to a direct path that answers later
// (docs/PROTOCOL.md §25). quic-go cannot move a connection to another
// remote address or another Transport by itself (its Conn.AddPath changes
// only the local side), so the move happens under QUIC: the relayed
// connection's Transport reads and writes a pathSwitch, whose remote
// address stays the relayed one QUIC was dialled to, while the datagrams
// themselves go to the relay or, once a direct path is proven, through the
// node's main socket to the peer's direct address. QUIC sees one path all
// along; what is lost while the switch happens it retransmits.
//
// A migrator punches the peer's direct candidates in the background, on
// the node's main socket, for the connection's life, at a low backed-off
// rate. Both sides run one. A MAC-verified PUNCH from a direct address D
// makes D's QUIC datagrams go to the relayed connection (the diversion in
// sockConn.route); a success response to this side's own PUNCH from D —
// both directions proven — moves this side's sends to D. Once QUIC
// datagrams of the peer arrive from D, the peer has moved its sends too,
// and the TURN allocation is released.

// Background punching schedule: the first PUNCH at once, then backed off
// from migrateInterval to migrateMaxInterval per candidate. At most
// punch.MaxCandidates (16) candidates of one peer, so the worst case is
// 16 PUNCHes (92 bytes each) every 5 s: about 300 bytes/s, less than the
// QUIC keep-alives of the connection itself. Each machine lives for
// migrateRound and is then started again with the same candidates, for as
// long as the connection lives.
const (
	migrateInterval    = time.Second
	migrateMaxInterval = 5 * time.Second
	migrateRound       = 10 * time.Minute
	// maxDiverted bounds the direct addresses of one connection whose
	// datagrams are diverted to it (each proven by a PUNCH).
	maxDiverted = 4
	// switchQueue is how many received datagrams wait for quic-go's
	// reader; beyond it, datagrams are dropped (counted) like a full
	// socket buffer's.
	switchQueue = 1024
	// packetBuf is the buffer of one queued datagram: quic-go's own
	// receive buffers are 1,452 bytes.
	packetBuf = 2048
	// packetOOB holds a diverted datagram's control messages (ECN, packet
	// info), as quic-go's own oobBufferSize.
	packetOOB = 128
)

// packet is one queued datagram of a pathSwitch.
type packet struct {
	buf  [packetBuf]byte
	oob  [packetOOB]byte
	n    int
	nn   int
	from net.Addr
	err  error
}

var packetPool = sync.Pool{New: func() any { return new(packet) }}

// pathSwitch is the net.PacketConn under a relayed connection's QUIC
// Transport. It reads the TURN allocation (PUNCH messages there go to the
// relayed attempt, the rest to QUIC) and the datagrams diverted from the
// node's main socket, which it presents as coming from the relayed remote
// address; it writes to the relay until a direct path is set, then to the
// direct address through the node's main socket.
//
// It is a quic.OOBCapablePacketConn with ReadBatch, like sockConn, so that
// a moved connection keeps what quic-go does for the main socket: GSO
// (one sendmsg per batch of up to 20 KiB), ECN, the don't-fragment bit and
// so path MTU discovery, and batched reads (docs/PROTOCOL.md §25, "Cost").
type pathSwitch struct {
	n     *Node
	relay net.PacketConn
	route func(*wire.Message, netip.AddrPort) // PUNCH on the relayed socket

	in       chan *packet
	kick     chan struct{} // a read deadline changed
	done     chan struct{}
	doneOnce sync.Once
	deadline atomic.Pointer[time.Time]

	remote    atomic.Pointer[net.UDPAddr] // the relayed remote address QUIC talks to
	direct    atomic.Pointer[net.UDPAddr] // set once this side sends on the direct path
	released  atomic.Bool                 // the allocation is closed: no relay path any more
	heard     chan struct{}               // closed at the first QUIC datagram from the direct path
	heardOnce sync.Once

	cids    *cidGen
	scratch [aes.BlockSize]byte // divert's, on the main socket's one reader
	held    *packet             // an error behind a batch, for the next read; the reader's only

	divertedIn, dropped atomic.Uint64
	cut                 atomic.Uint64 // GSO batches cut into datagrams for the relay
}

// cidGen makes the connection IDs of a relayed connection's transport,
// so that the main socket's reader can tell the connection's datagrams
// from those of any other connection with the same peer address (a
// second, direct connection with the same peer): each ID is one AES block,
// the encryption under a key of the path switch's own of a marker of its
// own and 8 random bytes. Decrypting the 16 bytes after a short header's
// first byte and finding the marker identifies the connection; the IDs
// themselves stay random-looking and unlinkable to an observer, as
// RFC 9000 §9.5 wants of IDs used on different paths.
type cidGen struct {
	block  cipher.Block
	marker [8]byte
}

func newCIDGen() *cidGen {
	var key [16]byte
	g := &cidGen{}
	rand.Read(key[:])
	rand.Read(g.marker[:])
	g.block, _ = aes.NewCipher(key[:]) // a 16-byte key is always valid
	return g
}

// GenerateConnectionID is quic.ConnectionIDGenerator's.
func (g *cidGen) GenerateConnectionID() (quic.ConnectionID, error) {
	var p, c [aes.BlockSize]byte
	copy(p[:8], g.marker[:])
	rand.Read(p[8:])
	g.block.Encrypt(c[:], p[:])
	return quic.ConnectionIDFromBytes(c[:]), nil
}

// ConnectionIDLen is quic.ConnectionIDGenerator's.
func (g *cidGen) ConnectionIDLen() int { return aes.BlockSize }

// owns reports whether b is a QUIC short-header packet to one of g's
// connection IDs. Only short headers: the relayed connection's handshake
// (long headers) went through the relay.
func (g *cidGen) owns(b []byte, scratch *[aes.BlockSize]byte) bool {
	if len(b) < 1+aes.BlockSize || b[0]&0x80 != 0 {
		return false
	}
	g.block.Decrypt(scratch[:], b[1:1+aes.BlockSize])
	return [8]byte(scratch[:8]) == g.marker
}

func newPathSwitch(n *Node, relay net.PacketConn, route func(*wire.Message, netip.AddrPort)) *pathSwitch {
	ps := &pathSwitch{
		n: n, relay: relay, route: route,
		in:    make(chan *packet, switchQueue),
		kick:  make(chan struct{}, 1),
		done:  make(chan struct{}),
		heard: make(chan struct{}),
		cids:  newCIDGen(),
	}
	n.wg.Go(ps.pump)
	return ps
}

// pump reads the relayed socket until it closes.
func (ps *pathSwitch) pump() {
	var msg wire.Message
	for {
		p := packetPool.Get().(*packet)
		n, from, err := ps.relay.ReadFrom(p.buf[:])
		if err != nil {
			if ps.released.Load() {
				packetPool.Put(p)
				return // the relay went away on purpose: the direct path remains
			}
			p.n, p.from, p.err = 0, nil, err
			select {
			case ps.in <- p:
			case <-ps.done:
			}
			return
		}
		b := p.buf[:n]
		if wire.Classify(b) == wire.KindX {
			if ua, ok := from.(*net.UDPAddr); ok && msg.Decode(b) == nil && msg.Type.Method == wire.MethodPunch {
				ap := ua.AddrPort()
				ps.route(&msg, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
			}
			packetPool.Put(p)
			continue
		}
		p.n, p.nn, p.from, p.err = n, 0, from, nil
		select {
		case ps.in <- p:
		case <-ps.done:
			packetPool.Put(p)
			return
		}
	}
}

// fromDirect queues a QUIC datagram that arrived on the node's main socket
// from a diverted direct address. It runs on quic-go's reader of the main
// socket, so it never blocks: a full queue drops the datagram.
func (ps *pathSwitch) fromDirect(b, oob []byte) {
	remote := ps.remote.Load()
	if remote == nil {
		return
	}
	ps.heardOnce.Do(func() { close(ps.heard) })
	p := packetPool.Get().(*packet)
	p.n, p.from, p.err = copy(p.buf[:], b), remote, nil
	p.nn = copy(p.oob[:], oob)
	select {
	case ps.in <- p:
		ps.divertedIn.Add(1)
	default:
		packetPool.Put(p)
		ps.dropped.Add(1)
	}
}

// next returns the next queued datagram (or error) of either path,
// waiting until the read deadline.
func (ps *pathSwitch) next() (*packet, error) {
	if p := ps.held; p != nil {
		ps.held = nil
		return p, nil
	}
	for {
		var expired <-chan time.Time
		var t *time.Timer
		if dl := ps.deadline.Load(); dl != nil && !dl.IsZero() {
			d := time.Until(*dl)
			if d <= 0 {
				return nil, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			expired = t.C
		}
		var p *packet
		select {
		case p = <-ps.in:
		case <-ps.kick:
		case <-expired:
			return nil, os.ErrDeadlineExceeded
		case <-ps.done:
			return nil, net.ErrClosed
		}
		if t != nil {
			t.Stop()
		}
		if p != nil {
			return p, nil
		}
		// the deadline changed
	}
}

// ReadBatch is how quic-go reads a pathSwitch (its batchConn, as for
// sockConn): it waits for one datagram and returns it with those already
// queued behind it, up to len(ms), into quic-go's own buffers. An error
// behind a batch is returned by the next call.
func (ps *pathSwitch) ReadBatch(ms []ipv4.Message, _ int) (int, error) {
	p, err := ps.next()
	if err != nil {
		return 0, err
	}
	if p.err != nil {
		err := p.err
		packetPool.Put(p)
		return 0, err
	}
	k := 0
	for {
		m := &ms[k]
		m.N = copy(m.Buffers[0], p.buf[:p.n])
		m.NN = copy(m.OOB, p.oob[:p.nn])
		m.Flags, m.Addr = 0, p.from
		packetPool.Put(p)
		if k++; k == len(ms) {
			return k, nil
		}
		select {
		case p = <-ps.in:
		default:
			return k, nil
		}
		if p.err != nil {
			ps.held = p
			return k, nil
		}
	}
}

// ReadFrom returns the next datagram of either path.
func (ps *pathSwitch) ReadFrom(b []byte) (int, net.Addr, error) {
	p, err := ps.next()
	if err != nil {
		return 0, nil, err
	}
	if p.err != nil {
		err := p.err
		packetPool.Put(p)
		return 0, nil, err
	}
	n, from := copy(b, p.buf[:p.n]), p.from
	packetPool.Put(p)
	return n, from, nil
}

// ReadMsgUDP is quic.OOBCapablePacketConn's; quic-go reads with ReadBatch.
func (ps *pathSwitch) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	p, err := ps.next()
	if err != nil {
		return 0, 0, 0, nil, err
	}
	if p.err != nil {
		err := p.err
		packetPool.Put(p)
		return 0, 0, 0, nil, err
	}
	n, oobn = copy(b, p.buf[:p.n]), copy(oob, p.oob[:p.nn])
	addr, _ = p.from.(*net.UDPAddr)
	packetPool.Put(p)
	return n, oobn, 0, addr, nil
}

// WriteTo sends to the direct path once there is one, else to the relay.
func (ps *pathSwitch) WriteTo(b []byte, addr net.Addr) (int, error) {
	if d := ps.direct.Load(); d != nil {
		return ps.n.tr.WriteTo(b, d)
	}
	if ps.released.Load() {
		return len(b), nil // cannot happen: released only after the switch
	}
	return ps.relay.WriteTo(b, addr)
}

// WriteMsgUDP is how quic-go sends on a pathSwitch. On the direct path
// the datagram goes, control messages and all (GSO segment size, ECN),
// to the node's main socket, whose capabilities quic-go saw through
// SyscallConn. The relay's socket takes one datagram per write and no
// control messages, so a GSO batch is cut into its segments there and
// the rest of oob is dropped (ECN marks are lost on the relay leg, which
// quic-go's ECN validation notices, as on any path that clears them).
func (ps *pathSwitch) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	if d := ps.direct.Load(); d != nil {
		return ps.n.sc.WriteMsgUDP(b, oob, d)
	}
	if ps.released.Load() {
		return len(b), len(oob), nil // cannot happen: released only after the switch
	}
	seg := gsoSegment(oob)
	if seg <= 0 || seg >= len(b) {
		n, err := ps.relay.WriteTo(b, addr)
		return n, len(oob), err
	}
	ps.cut.Add(1)
	for off := 0; off < len(b); off += seg {
		if _, err := ps.relay.WriteTo(b[off:min(off+seg, len(b))], addr); err != nil {
			return off, 0, err
		}
	}
	return len(b), len(oob), nil
}

// SyscallConn returns the node's main socket's: quic-go reads from it
// what the socket can do (GSO, ECN, don't-fragment), which is what the
// direct path, the one that carries a moved connection's bulk, uses. The
// options quic-go sets through it (receiving ECN, the don't-fragment bit,
// buffer sizes) are those the node's own Transport set on that socket
// already.
func (ps *pathSwitch) SyscallConn() (syscall.RawConn, error) {
	return ps.n.sc.UDPConn.SyscallConn()
}

// Close ends reads; the allocation is closed by its owner (relayPath).
func (ps *pathSwitch) Close() error {
	ps.doneOnce.Do(func() { close(ps.done) })
	return nil
}

func (ps *pathSwitch) LocalAddr() net.Addr { return ps.relay.LocalAddr() }

// SetDeadline sets the read deadline; writes do not block.
func (ps *pathSwitch) SetDeadline(t time.Time) error { return ps.SetReadDeadline(t) }

// SetReadDeadline is how quic-go's Transport.Close stops its reader.
func (ps *pathSwitch) SetReadDeadline(t time.Time) error {
	ps.deadline.Store(&t)
	select {
	case ps.kick <- struct{}{}:
	default:
	}
	return nil
}

func (ps *pathSwitch) SetWriteDeadline(time.Time) error { return nil }

// SetReadBuffer and SetWriteBuffer are no-ops: the sockets under the
// switch are the TURN client's and the node's, and quic-go only asks so
// that it need not warn.
func (ps *pathSwitch) SetReadBuffer(int) error { return nil }

// SetWriteBuffer is a no-op, as SetReadBuffer.
func (ps *pathSwitch) SetWriteBuffer(int) error { return nil }

// divertTable maps direct peer addresses to the relayed connections whose
// QUIC datagrams arrive from them; it is replaced, never changed, so that
// the socket reader needs no lock.
type divertTable map[netip.AddrPort]*pathSwitch

// divert hands a QUIC datagram from a diverted address, to one of the
// relayed connection's IDs, to that connection and reports true; false
// leaves it to the main Transport. With no diversion, this is one atomic
// load; with one, a map lookup and, for its address, one AES block.
func (s *sockConn) divert(m *ipv4.Message) bool {
	if s.dropPeers != nil && s.dropPeers.Load() {
		return true // tests: a firewall between the peers (migrate_test.go)
	}
	t := s.diverts.Load()
	if t == nil {
		return false
	}
	ua, ok := m.Addr.(*net.UDPAddr)
	if !ok {
		return false
	}
	from := ua.AddrPort()
	ps := (*t)[netip.AddrPortFrom(from.Addr().Unmap(), from.Port())]
	b := m.Buffers[0][:m.N]
	if ps == nil || !ps.cids.owns(b, &ps.scratch) {
		return false // another connection's, perhaps with the same peer
	}
	ps.fromDirect(b, m.OOB[:m.NN])
	return true
}

// setDiversion adds (ps non-nil) or removes the diversion of from.
func (n *Node) setDiversion(from netip.AddrPort, ps *pathSwitch) {
	n.divertMu.Lock()
	defer n.divertMu.Unlock()
	t := divertTable{}
	if old := n.sc.diverts.Load(); old != nil {
		for k, v := range *old {
			t[k] = v
		}
	}
	if ps != nil {
		t[from] = ps
	} else {
		delete(t, from)
	}
	if len(t) == 0 {
		n.sc.diverts.Store(nil)
		return
	}
	n.sc.diverts.Store(&t)
}

// migrator punches the peer's direct candidates in the background for one
// relayed connection and moves it when a direct path answers.
type migrator struct {
	n      *Node
	rp     *relayPath
	c      *Conn
	ps     *pathSwitch
	peer   wire.ID
	secret wire.Secret

	mu       sync.Mutex
	m        *punch.Machine
	cands    []netip.AddrPort
	diverted []netip.AddrPort
	poke     chan struct{}
	quit     chan struct{}
	quitOnce sync.Once
}

// startMigrator begins background punching for c, relayed over rp, towards
// the peer's direct candidates; it does nothing without any (a node whose
// UDP is blocked, a dialer that chose RelayAlways).
func (n *Node) startMigrator(rp *relayPath, c *Conn) {
	if n.cfg.Relay == RelayAlways || n.UDPBlocked() || rp.ps == nil || c.qc == nil {
		return
	}
	cands := n.directCandidates(rp.peer, rp.secret)
	if len(cands) == 0 {
		return
	}
	ua, ok := c.qc.RemoteAddr().(*net.UDPAddr)
	if !ok {
		return
	}
	rp.ps.remote.Store(ua)
	mg := &migrator{
		n: n, rp: rp, c: c, ps: rp.ps, peer: rp.peer, secret: rp.secret, cands: cands,
		poke: make(chan struct{}, 1), quit: make(chan struct{}),
	}
	if err := mg.restart(time.Now()); err != nil {
		n.log.Debug("background punch", "peer", rp.peer, "err", err)
		return
	}
	n.mu.Lock()
	if old := n.migrators[rp.peer]; old != nil {
		old.stop()
	}
	n.migrators[rp.peer] = mg
	n.mu.Unlock()
	n.wg.Go(mg.drive)
}

// directCandidates returns the peer's direct UDP addresses this node
// punched for the introduction with secret: the failed attempt's
// candidates (configured, signalled and peer-reflexive ones).
func (n *Node) directCandidates(peer wire.ID, secret wire.Secret) []netip.AddrPort {
	n.mu.Lock()
	a := n.attempts[peer]
	var early []netip.AddrPort
	if s := n.sessions[peer]; s != nil && s.secret == secret {
		early = append(early, s.udp...)
	}
	n.mu.Unlock()
	if a == nil || a.secret != secret {
		return early
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m.Candidates(early)
}

func (mg *migrator) restart(now time.Time) error {
	m, err := punch.New(punch.Config{
		Self: mg.n.self, Peer: mg.peer, Secret: mg.secret,
		Candidates:  mg.cands,
		Timeout:     migrateRound,
		Interval:    migrateInterval,
		MaxInterval: migrateMaxInterval,
	}, now)
	if err != nil {
		return err
	}
	mg.mu.Lock()
	mg.m = m
	mg.mu.Unlock()
	return nil
}

// addCandidates adds candidates the peer signalled later.
func (mg *migrator) addCandidates(addrs []netip.AddrPort) {
	mg.mu.Lock()
	defer mg.mu.Unlock()
	for _, a := range addrs {
		if len(mg.cands) < punch.MaxConfigured {
			mg.cands = append(mg.cands, a)
		}
	}
	if mg.m.AddCandidates(addrs, time.Now()) > 0 {
		select {
		case mg.poke <- struct{}{}:
		default:
		}
	}
}

// receive handles a PUNCH from the peer on the main socket. A PUNCH the
// machine accepted (SOURCE_ID, MAC, no replay from elsewhere) proves
// that from is the peer: its QUIC datagrams go to this connection.
func (mg *migrator) receive(msg *wire.Message, from netip.AddrPort) {
	mg.mu.Lock()
	before := mg.m.Stats().Received
	mg.send(mg.m.Receive(msg, from, time.Now()))
	ok := mg.m.Stats().Received > before
	mg.mu.Unlock()
	if ok {
		mg.divertFrom(from)
		select {
		case mg.poke <- struct{}{}:
		default:
		}
	}
}

func (mg *migrator) divertFrom(from netip.AddrPort) {
	mg.mu.Lock()
	defer mg.mu.Unlock()
	for _, d := range mg.diverted {
		if d == from {
			return
		}
	}
	if len(mg.diverted) == maxDiverted {
		return
	}
	mg.diverted = append(mg.diverted, from)
	mg.n.setDiversion(from, mg.ps)
}

// send writes the machine's packets from the main socket; mg.mu is held.
func (mg *migrator) send(pkts []punch.Packet) {
	for _, p := range pkts {
		mg.n.tr.WriteTo(p.Data, net.UDPAddrFromAddrPort(p.To))
	}
}

func (mg *migrator) stop() { mg.quitOnce.Do(func() { close(mg.quit) }) }

func (mg *migrator) drive() {
	timer := time.NewTimer(0)
	defer timer.Stop()
	defer mg.end()
	qdone := mg.c.qc.Context().Done()
	moved, released := false, false
	for {
		now := time.Now()
		mg.mu.Lock()
		mg.send(mg.m.Tick(now))
		state, next := mg.m.State(), mg.m.Next()
		path, rtt, _ := mg.m.Path()
		mg.mu.Unlock()
		switch {
		case state == punch.Failed:
			if err := mg.restart(now); err != nil {
				return
			}
			continue
		case state == punch.Connected && !moved:
			moved = true
			mg.move(path, rtt)
		}
		var heard <-chan struct{}
		if moved && !released {
			heard = mg.ps.heard
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(now), 0)
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-mg.poke:
		case <-heard:
			// The peer sends on the direct path too: neither side needs
			// the relay any more.
			released = true
			mg.rp.release()
		case <-qdone:
			return
		case <-mg.quit:
			return
		case <-mg.n.ctx.Done():
			return
		}
		timer.Stop()
	}
}

// move switches this side's sends to the direct path, which the PUNCH
// exchange proved both ways, and reports it.
func (mg *migrator) move(path netip.AddrPort, rtt time.Duration) {
	mg.divertFrom(path)
	mg.ps.direct.Store(net.UDPAddrFromAddrPort(path))
	mg.c.moveTo(path, rtt)
	mg.n.log.Debug("moved to a direct path", "peer", mg.peer, "path", path, "rtt", rtt)
}

// end removes the migrator's diversions and routing.
func (mg *migrator) end() {
	n := mg.n
	n.mu.Lock()
	if n.migrators[mg.peer] == mg {
		delete(n.migrators, mg.peer)
	}
	n.mu.Unlock()
	mg.mu.Lock()
	diverted := mg.diverted
	mg.diverted = nil
	mg.mu.Unlock()
	for _, d := range diverted {
		n.setDiversion(d, nil)
	}
}

// routeMigrate hands a PUNCH from the main socket to the background punch
// of a relayed connection with its sender, if one runs.
func (n *Node) routeMigrate(msg *wire.Message, from netip.AddrPort) {
	n.mu.Lock()
	mg := n.migrators[msg.SourceID]
	n.mu.Unlock()
	if mg != nil {
		mg.receive(msg, from)
	}
}

// migrateSignalled adds candidates the peer signalled to the background
// punch of a relayed connection under the same introduction.
func (n *Node) migrateSignalled(peer wire.ID, secret wire.Secret, udp []netip.AddrPort) {
	n.mu.Lock()
	mg := n.migrators[peer]
	n.mu.Unlock()
	if mg != nil && mg.secret == secret && len(udp) > 0 {
		mg.addCandidates(udp)
	}
}

// A pathSwitch gets quic-go's optimised path (sys_conn_oob.go): without
// these, quic-go would wrap it as a plain net.PacketConn.
var (
	_ quic.OOBCapablePacketConn = (*pathSwitch)(nil)
	_ interface {
		ReadBatch([]ipv4.Message, int) (int, error)
	} = (*pathSwitch)(nil)
)
