package ewf

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// gsoSegment returns the UDP_SEGMENT size quic-go put in oob for a GSO
// send (the size of each datagram in the buffer but perhaps the last), or
// 0 for a single datagram.
func gsoSegment(oob []byte) int {
	for b := oob; len(b) > 0; {
		h, data, rest, err := unix.ParseOneSocketControlMessage(b)
		if err != nil {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_SEGMENT && len(data) >= 2 {
			return int(binary.NativeEndian.Uint16(data)) // as quic-go writes it
		}
		b = rest
	}
	return 0
}
