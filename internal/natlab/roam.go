//go:build linux

package natlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// What a host that moves needs: a second uplink (a laptop with Wi-Fi and a
// cable), the switch from one to the other, and a NAT that forgets its
// mappings (a router restart, a carrier rebinding).

// AddUplink gives a host behind a router a second interface, ifname, on
// the LAN of another router, with the next free address there, and
// returns that address. The host's default route stays where it is until
// SwitchUplink.
func (l *Lab) AddUplink(hostName, ifname, routerName string) (netip.Addr, error) {
	h := l.host(hostName)
	r, ok := l.routers[routerName]
	if !ok {
		return netip.Addr{}, fmt.Errorf("natlab: no router %s", routerName)
	}
	r.nextHost++
	if r.nextHost > 250 {
		return netip.Addr{}, errors.New("natlab: at most 250 hosts per router")
	}
	a4 := r.lan.Addr().As4()
	a4[3] = byte(1 + r.nextHost)
	addr := netip.AddrFrom4(a4)
	port := fmt.Sprintf("h%d", r.nextHost)
	if err := veth(h.ns, ifname, r.ns, port); err != nil {
		return netip.Addr{}, err
	}
	if err := enslave(r.ns, port, "lan0"); err != nil {
		return netip.Addr{}, err
	}
	if err := ipn(h.ns, "addr", "add", netip.PrefixFrom(addr, 24).String(), "dev", ifname); err != nil {
		return netip.Addr{}, err
	}
	l.mu.Lock()
	if h.uplinks == nil {
		h.uplinks = map[string]uplinkOf{"eth0": {router: h.router, addr: h.addr}}
	}
	h.uplinks[ifname] = uplinkOf{router: r, addr: addr}
	l.mu.Unlock()
	return addr, nil
}

// uplinkOf is one interface of a host with several uplinks.
type uplinkOf struct {
	router *router
	addr   netip.Addr
}

// SwitchUplink moves a host from interface from to interface to (added by
// AddUplink, or eth0): from goes down, as Wi-Fi does when the laptop is
// plugged in and the Wi-Fi is switched off, and the default route goes
// through to's router. The host's address (Addr) becomes to's.
func (l *Lab) SwitchUplink(hostName, from, to string) error {
	h := l.host(hostName)
	l.mu.Lock()
	up, ok := h.uplinks[to]
	l.mu.Unlock()
	if !ok {
		return fmt.Errorf("natlab: host %s has no uplink %s", hostName, to)
	}
	if err := ipn(h.ns, "link", "set", from, "down"); err != nil {
		return err
	}
	if err := ipn(h.ns, "link", "set", to, "up"); err != nil {
		return err
	}
	if err := ipn(h.ns, "route", "replace", "default", "via", up.router.lan.Addr().String(), "dev", to); err != nil {
		return err
	}
	l.mu.Lock()
	h.addr, h.router = up.addr, up.router
	l.mu.Unlock()
	return nil
}

// FlushConntrack deletes every IPv4 connection-tracking entry of a
// router (the home router of a CGNAT pair), so every NAT mapping is
// gone, as after the router restarted: the next packet of each flow gets a
// new mapping. It talks ctnetlink directly, so the conntrack tool is not
// needed.
func (l *Lab) FlushConntrack(routerName string) error {
	r, ok := l.routers[routerName]
	if !ok {
		return fmt.Errorf("natlab: no router %s", routerName)
	}
	return inNetns(r.ns, flushConntrack)
}

// ipctnlMsgCtDelete is IPCTNL_MSG_CT_DELETE (linux/netfilter/nfnetlink_conntrack.h):
// with no attributes it deletes the whole table of the family.
const ipctnlMsgCtDelete = 2

func flushConntrack() error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("natlab: ctnetlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("natlab: ctnetlink bind: %w", err)
	}
	// struct nlmsghdr (16 bytes) + struct nfgenmsg (4 bytes).
	msg := make([]byte, 20)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtDelete)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], 1) // sequence number
	msg[16] = unix.AF_INET
	msg[17] = unix.NFNETLINK_V0
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("natlab: ctnetlink flush: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("natlab: ctnetlink ack: %w", err)
	}
	// The ack is an NLMSG_ERROR whose error field (after the header) is 0.
	if n < 20 || binary.NativeEndian.Uint16(buf[4:]) != unix.NLMSG_ERROR {
		return fmt.Errorf("natlab: ctnetlink: unexpected answer of %d bytes", n)
	}
	if e := int32(binary.NativeEndian.Uint32(buf[16:])); e != 0 {
		return fmt.Errorf("natlab: ctnetlink flush: %w", syscall.Errno(-e))
	}
	return nil
}

// Pause stops a process (SIGSTOP) as a laptop's sleep does: it sends,
// reads and refreshes nothing until Resume.
func (p *Proc) Pause() error { return p.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused process (SIGCONT).
func (p *Proc) Resume() error { return p.cmd.Process.Signal(syscall.SIGCONT) }
