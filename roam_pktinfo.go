//go:build linux || darwin

package ewf

import "golang.org/x/sys/unix"

// unpin returns oob without its IP_PKTINFO and IPV6_PKTINFO control
// messages (the ECN and GSO ones stay), and whether it had one. quic-go
// pins a server connection's sends to the local address and interface its
// first packet came in on; once the host has lost that address (its
// Wi-Fi went away), the kernel picks a source for the unpinned send.
func unpin(oob []byte) ([]byte, bool) {
	var out []byte
	found := false
	for b := oob; len(b) > 0; {
		h, _, rest, err := unix.ParseOneSocketControlMessage(b)
		if err != nil {
			return oob, false
		}
		if (h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO) ||
			(h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO) {
			found = true
		} else {
			out = append(out, b[:len(b)-len(rest)]...)
		}
		b = rest
	}
	return out, found
}
