//go:build !linux

package ewf

// gsoSegment: quic-go uses GSO on Linux only.
func gsoSegment([]byte) int { return 0 }
