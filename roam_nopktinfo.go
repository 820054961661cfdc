//go:build !linux && !darwin

package ewf

// unpin: quic-go pins sends with IP_PKTINFO only on Linux and Darwin
// (and x/sys has no IP_PKTINFO on the BSDs).
func unpin(oob []byte) ([]byte, bool) { return oob, false }
