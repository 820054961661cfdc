//go:build linux

package natlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Forwarder copies Ethernet frames between two interfaces of one namespace,
// adding a fixed delay and random loss, because this kernel (and CI's) has
// no netem. It sits in the middle of a router's WAN link:
//
//	router wan0 ══ rNa ⇄ Forwarder ⇄ rNb ══ rN ─ br0 (public switch)
//
// Each direction has one reader goroutine (AF_PACKET socket, loss decision,
// enqueue with the release time) and one writer goroutine (sleep until the
// head frame is due, send), joined by a bounded queue that drops when full.
// A fixed delay keeps frames in order.
//
// The sockets use PACKET_VNET_HDR: veth hands over TCP segments up to 64 KiB
// (GSO) and UDP/TCP packets whose checksum is not filled in yet (checksum
// offload); the virtio-net header read with each frame carries that state
// and is written back with it, so the kernel finishes the job on the other
// side exactly as if the frame had crossed the veth directly.
type Forwarder struct {
	link Link
	a, b *os.File
	dirs [2]*direction
	wg   sync.WaitGroup
	done chan struct{}
	once sync.Once
}

// ForwarderStats counts frames of one direction.
type ForwarderStats struct {
	Forwarded uint64 // sent on after the delay
	Lost      uint64 // dropped by the loss decision
	Overflow  uint64 // dropped because the queue was full
	SendFail  uint64 // dropped because the kernel refused the send (ENOBUFS)
	// GSO counts frames read that held several packets (a segmentation
	// offload super-frame, whose virtio-net header has a gso_type). The
	// lab turns offloads off on the links into the forwarder, so that a
	// loss decision is one wire packet's; this stays zero unless that
	// failed.
	GSO uint64
}

type direction struct {
	in, out   *os.File
	q         chan frame
	rng       *rand.Rand
	forwarded atomic.Uint64
	lost      atomic.Uint64
	overflow  atomic.Uint64
	sendFail  atomic.Uint64
	gso       atomic.Uint64
}

type frame struct {
	due  time.Time
	data []byte
}

const (
	vnetHdrLen   = 10   // struct virtio_net_hdr
	virtioGSOECN = 0x80 // VIRTIO_NET_HDR_GSO_ECN, a flag beside the gso_type
	queueLen     = 4096
	maxFrame     = vnetHdrLen + 65535 + 14 + 4
)

// startForwarder opens packet sockets on ifA and ifB in namespace ns and
// starts forwarding. Direction 0 is A→B (outbound from the router), 1 is B→A.
func startForwarder(ns, ifA, ifB string, link Link) (*Forwarder, error) {
	f := &Forwarder{link: link, done: make(chan struct{})}
	err := inNetns(ns, func() error {
		var err error
		if f.a, err = openPacket(ifA); err != nil {
			return err
		}
		if f.b, err = openPacket(ifB); err != nil {
			f.a.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	f.dirs[0] = &direction{in: f.a, out: f.b, q: make(chan frame, queueLen),
		rng: rand.New(rand.NewPCG(link.Seed, 0))}
	f.dirs[1] = &direction{in: f.b, out: f.a, q: make(chan frame, queueLen),
		rng: rand.New(rand.NewPCG(link.Seed, 1))}
	for _, d := range f.dirs {
		f.wg.Add(2)
		go f.read(d)
		go f.write(d)
	}
	return f, nil
}

func openPacket(ifname string) (*os.File, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("natlab: forwarder: %w", err)
	}
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("natlab: forwarder: packet socket: %w", err)
	}
	for _, opt := range []struct {
		name string
		opt  int
	}{
		{"PACKET_VNET_HDR", unix.PACKET_VNET_HDR},
		// Do not read back the frames we send.
		{"PACKET_IGNORE_OUTGOING", unix.PACKET_IGNORE_OUTGOING},
	} {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, opt.opt, 1); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("natlab: forwarder: %s: %w", opt.name, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("natlab: forwarder: bind %s: %w", ifname, err)
	}
	// A non-blocking descriptor goes to the runtime poller, so Close
	// unblocks a pending Read.
	return os.NewFile(uintptr(fd), ifname), nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (f *Forwarder) read(d *direction) {
	defer f.wg.Done()
	defer close(d.q)
	buf := make([]byte, maxFrame)
	for {
		n, err := d.in.Read(buf)
		if err != nil {
			return // closed
		}
		if n < vnetHdrLen+14 {
			continue
		}
		if buf[1]&^virtioGSOECN != 0 { // virtio_net_hdr.gso_type
			d.gso.Add(1)
		}
		etherType := binary.BigEndian.Uint16(buf[vnetHdrLen+12:])
		if etherType == 0x0800 && f.link.Loss > 0 && d.rng.Float64() < f.link.Loss {
			d.lost.Add(1)
			continue
		}
		fr := frame{due: time.Now().Add(f.link.Delay), data: append([]byte(nil), buf[:n]...)}
		select {
		case d.q <- fr:
		default:
			d.overflow.Add(1)
		}
	}
}

func (f *Forwarder) write(d *direction) {
	defer f.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for fr := range d.q {
		if wait := time.Until(fr.due); wait > 0 {
			t.Reset(wait)
			select {
			case <-t.C:
			case <-f.done:
				return
			}
		}
		if _, err := d.out.Write(fr.data); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			d.sendFail.Add(1) // e.g. ENOBUFS: a lost frame, as on a real link
			continue
		}
		d.forwarded.Add(1)
	}
}

// Stats returns the counters of the outbound (router → public) and inbound
// directions.
func (f *Forwarder) Stats() (out, in ForwarderStats) {
	get := func(d *direction) ForwarderStats {
		return ForwarderStats{Forwarded: d.forwarded.Load(), Lost: d.lost.Load(), Overflow: d.overflow.Load(), SendFail: d.sendFail.Load(), GSO: d.gso.Load()}
	}
	return get(f.dirs[0]), get(f.dirs[1])
}

// Close stops the forwarder and closes its sockets.
func (f *Forwarder) Close() error {
	var err error
	f.once.Do(func() {
		close(f.done)
		err = errors.Join(f.a.Close(), f.b.Close())
		f.wg.Wait()
	})
	return err
}
