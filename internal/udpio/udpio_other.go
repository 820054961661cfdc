//go:build !linux

package udpio

import "net"

// The portable fallback moves one datagram per system call.

type reader struct{ c *net.UDPConn }

func newReader(c *net.UDPConn, _ int) (reader, error) { return reader{c}, nil }

func (r reader) readBatch(ms []Message) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	n, ap, err := r.c.ReadFromUDPAddrPort(ms[0].Buf)
	if err != nil {
		return 0, err
	}
	ms[0].N = n
	ms[0].Addr = netipUnmap(ap)
	return 1, nil
}

type writer struct{ c *net.UDPConn }

func newWriter(c *net.UDPConn, _ int) (writer, error) { return writer{c}, nil }

func (w writer) writeBatch(ms []Message) (skipped int, firstErr error) {
	for i := range ms {
		if _, err := w.c.WriteToUDPAddrPort(ms[i].Buf[:ms[i].N], ms[i].Addr); err != nil {
			if isClosed(err) {
				return skipped + len(ms) - i, err
			}
			skipped++
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	return skipped, firstErr
}
