//go:build linux || darwin

package ewf

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// TestUnpinnedSend: quic-go pins a server connection's sends to the local
// address its first packet came in on; a send pinned to an address the
// host does not have (its Wi-Fi address, gone) is sent again without the
// pin and arrives, with the other control messages kept.
func TestUnpinnedSend(t *testing.T) {
	a, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sc := newSockConn(a, nil)
	pin := (&ipv4.ControlMessage{Src: net.IPv4(192, 0, 2, 55).To4()}).Marshal()
	// An IP_TOS message (ECN bits), as quic-go adds.
	tos := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&tos[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TOS
	h.SetLen(unix.CmsgLen(4))
	tos[unix.CmsgLen(0)] = 2
	oob := append(append([]byte(nil), pin...), tos...)
	if o, ok := unpin(oob); !ok || !bytes.Equal(o, tos) {
		t.Fatalf("unpin: %x %v, want %x", o, ok, tos)
	}
	if _, _, err := a.WriteMsgUDP([]byte{0x40, 1}, oob, b.LocalAddr().(*net.UDPAddr)); err == nil {
		t.Skip("the kernel sent from a source address the host does not have")
	}
	pkt := []byte{0x40, 2}
	if _, _, err := sc.WriteMsgUDP(pkt, oob, b.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatal(err)
	}
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	k, from, err := b.ReadFromUDPAddrPort(buf)
	if err != nil || !bytes.Equal(buf[:k], pkt) {
		t.Fatalf("read %x, %v", buf[:k], err)
	}
	if sc.unpinned.Load() != 1 || from.Addr().Unmap() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("unpinned %d, from %s", sc.unpinned.Load(), from)
	}
}
