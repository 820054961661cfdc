package server

import (
	"errors"
	"net"
	"net/netip"

	"github.com/ewf-project/ewf/internal/udpio"
	"github.com/ewf-project/ewf/wire"
)

// udpSocket is one UDP socket of a listen address. It is the Replier of the
// Handler that reads it: late REGISTER answers and INTRODUCE indications
// for clients bound through it leave from it, so they come from the address
// and port the client talked to (NATs with address-dependent filtering drop
// anything else).
type udpSocket struct {
	c *net.UDPConn

	// alt, altI, altJ and altIP4: the RFC 5780 role of the socket, if any
	// (Handler has the same fields).
	alt        *rfc5780
	altI, altJ uint8
	altIP4     bool
}

// Reply sends b to to. A UDP send does not wait for the peer; a full socket
// buffer drops the datagram like the network would.
func (u *udpSocket) Reply(b []byte, to netip.AddrPort) {
	_, _ = u.c.WriteToUDPAddrPort(b, to)
}

// readBufSize is one more than any message: a datagram that fills the
// buffer was truncated and is dropped by Handle's length check.
const readBufSize = wire.MaxMessageSize + 1

// serveUDP is the reader goroutine of one socket: read a batch, handle each
// datagram, send the answers in one batch. It returns when the socket is
// closed.
func (d *Daemon) serveUDP(u *udpSocket, h *Handler) {
	defer d.wg.Done()
	batch := d.srv.cfg.UDPBatch
	rd, err := udpio.NewReader(u.c, batch)
	if err == nil {
		var wr *udpio.Writer
		wr, err = udpio.NewWriter(u.c, batch)
		if err == nil {
			d.udpLoop(rd, wr, h, batch)
			return
		}
	}
	d.log.Error("udp reader not started", "err", err)
}

func (d *Daemon) udpLoop(rd *udpio.Reader, wr *udpio.Writer, h *Handler, batch int) {
	in := make([]udpio.Message, batch)
	out := make([]udpio.Message, batch)
	for i := range in {
		in[i].Buf = make([]byte, readBufSize)
		out[i].Buf = make([]byte, 0, wire.MaxMessageSize)
	}
	for {
		n, err := rd.ReadBatch(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Unconnected UDP sockets report hardly any errors; one that
			// does is logged (rarely) and the loop goes on.
			d.log.Debug("udp read", "err", err)
			continue
		}
		k := 0
		now := d.srv.now()
		for i := range n {
			resp := h.Handle(now, in[i].Buf[:in[i].N], in[i].Addr, out[k].Buf[:0])
			if len(resp) > 0 {
				out[k].Buf, out[k].N = resp, len(resp)
				out[k].Addr = in[i].Addr
				k++
			}
		}
		if k > 0 {
			if _, err := wr.WriteBatch(out[:k]); err != nil && errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}
}
