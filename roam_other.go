//go:build !unix

package ewf

// unpin: quic-go sets no packet info on this platform.
func unpin(oob []byte) ([]byte, bool) { return oob, false }
