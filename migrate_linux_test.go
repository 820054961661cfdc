package ewf

import (
	"encoding/binary"
	"net"
	"testing"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// TestGSOSegment: the segment size is read from a UDP_SEGMENT control
// message behind others (quic-go appends it to the packet-info message
// it pins a server connection's source with); without one, or with a
// broken buffer, the write is one datagram.
func TestGSOSegment(t *testing.T) {
	seg := func(size uint16) []byte {
		b := make([]byte, unix.CmsgSpace(2))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
		binary.NativeEndian.PutUint16(b[unix.CmsgSpace(0):], size)
		return b
	}
	pktinfo := (&ipv4.ControlMessage{Src: net.IPv4(127, 0, 0, 1), IfIndex: 1}).Marshal()
	for _, c := range []struct {
		name string
		oob  []byte
		want int
	}{
		{"none", nil, 0},
		{"alone", seg(1452), 1452},
		{"behind packet info", append(append([]byte{}, pktinfo...), seg(1200)...), 1200},
		{"packet info only", pktinfo, 0},
		{"truncated", seg(1452)[:4], 0},
	} {
		if got := gsoSegment(c.oob); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}
