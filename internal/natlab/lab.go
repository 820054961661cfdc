//go:build linux

package natlab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Spec declares a lab. The server host ("server", two public addresses) and
// the public switch are always there; routers and hosts are added by name.
type Spec struct {
	Routers []RouterSpec
	Hosts   []HostSpec
}

// RouterSpec declares one NAT box (two for CGNAT: a home router behind a
// carrier router).
type RouterSpec struct {
	// Name must be unique among routers and hosts; it becomes part of the
	// namespace name.
	Name string
	// NAT is the router's behaviour; None is not allowed here (a public
	// host has no router).
	NAT NAT
	// Hairpin lets hosts behind the router reach each other through its
	// public address. It is ignored for CGNAT, whose carrier never hairpins
	// (the home router, whose WAN is a carrier-private address, does).
	Hairpin bool
	// UDPTimeout is the UDP mapping timeout. Zero keeps the kernel
	// defaults: 30 s, raised to 120 s only once the flow has seen a reply
	// and is still active more than 2 s after it began (so a flow that
	// exchanged a few packets at once and fell silent is gone after 30 s).
	UDPTimeout time.Duration
	// IPv6 gives the router's LAN a global IPv6 /64 (2001:db8:0:<n>::/64),
	// routed without NAT through a stateful firewall that lets in only
	// packets of flows an inside host started (ipv6.go), beside whatever
	// the router does to IPv4: a dual-stack home network. Not for CGNAT.
	IPv6 bool
	// WAN adds delay and loss between the router's WAN port and the public
	// switch. The zero value is a plain link.
	WAN Link
}

// Link is the shape of an emulated link. The kernel here has no netem, so a
// non-zero Link puts a userspace Forwarder on it.
type Link struct {
	// Delay is added to every frame in each direction, so the round trip
	// grows by twice Delay.
	Delay time.Duration
	// Loss is the probability in [0,1) that an IPv4 packet is dropped, in
	// each direction (each frame the forwarder sees is one packet:
	// segmentation offloads are off on its links). ARP is never dropped.
	Loss float64
	// Seed seeds the drop decisions (0 is a valid seed).
	Seed uint64
}

func (l Link) isZero() bool { return l.Delay == 0 && l.Loss == 0 }

// HostSpec declares one end host.
type HostSpec struct {
	// Name must be unique among routers and hosts ("server" is taken).
	Name string
	// Router is the name of the router the host sits behind; empty puts the
	// host on the public segment.
	Router string
	// WAN adds delay and loss between a public host and the public switch,
	// as RouterSpec.WAN does for a router. Only for public hosts.
	WAN Link
}

// ServerHost is the name of the host that carries the two server addresses.
const ServerHost = "server"

// Addresses of the public segment (RFC 5737 TEST-NET-3).
var (
	publicNet   = netip.MustParsePrefix("203.0.113.0/24")
	serverAddr1 = netip.MustParseAddr("203.0.113.1")
	serverAddr2 = netip.MustParseAddr("203.0.113.2")
)

// Lab is a running topology. All of it lives in network namespaces whose
// names start with Prefix; Close removes them.
type Lab struct {
	prefix  string
	spec    Spec
	routers map[string]*router
	hosts   map[string]*host
	// nss lists the lab's namespaces in creation order.
	nss []string

	mu        sync.Mutex
	closed    bool
	closeErr  error
	procs     []*Proc
	closers   []func() error // in-process sockets and forwarders
	responder *responder
}

type router struct {
	spec RouterSpec
	idx  int
	ns   string // the NAT box hosts attach to (the home router for CGNAT)
	isp  string // the carrier router namespace, CGNAT only
	wan  netip.Addr
	wan6 netip.Addr   // IPv6 routers only
	lan6 netip.Prefix // IPv6 routers only; the router is ::1
	lan  netip.Prefix // inside subnet; the router is .1
	fwd  *Forwarder
	// nextHost is the last host number given out on lan.
	nextHost int
}

type host struct {
	name   string
	ns     string
	addr   netip.Addr
	addr6  netip.Addr // global IPv6, for the server and hosts of IPv6 routers
	router *router    // nil for public hosts
	fwd    *Forwarder // public hosts with a WAN link
	// uplinks, for a host given a second one (roam.go): by interface.
	uplinks map[string]uplinkOf
}

// Skip skips the test with one line when the lab cannot run here: not root,
// or ip/nft missing. Under CI (CI set in the environment) it fails instead,
// because CI runs as root with nftables installed and must not skip.
func Skip(tb testing.TB) {
	tb.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "natlab: needs root for network namespaces"
	} else if _, err := exec.LookPath("ip"); err != nil {
		reason = "natlab: needs the ip command (iproute2)"
	} else if _, err := exec.LookPath("nft"); err != nil {
		reason = "natlab: needs the nft command (nftables)"
	} else if _, err := exec.LookPath("ethtool"); err != nil {
		reason = "natlab: needs the ethtool command (ethtool)"
	}
	if reason == "" {
		return
	}
	if os.Getenv("CI") != "" {
		tb.Fatal(reason + " (CI must not skip)")
	}
	tb.Skip(reason)
}

// New builds the lab described by spec, or skips the test (see Skip). The
// lab is closed by tb.Cleanup, on SIGINT/SIGTERM, and, if the test binary
// dies some other way, by the next New of any process.
func New(tb testing.TB, spec Spec) *Lab {
	tb.Helper()
	Skip(tb)
	l, err := build(spec)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Error(err)
		}
	})
	return l
}

func build(spec Spec) (*Lab, error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	cleanStale()
	prefix, err := claimPrefix()
	if err != nil {
		return nil, err
	}
	l := &Lab{
		prefix:  prefix,
		spec:    spec,
		routers: map[string]*router{},
		hosts:   map[string]*host{},
	}
	register(l)
	if err := l.setup(); err != nil {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, err
	}
	return l, nil
}

func checkSpec(spec Spec) error {
	names := map[string]bool{ServerHost: true, "sw": true}
	valid := func(n string) error {
		if n == "" || strings.ContainsAny(n, "/ \t") || len(n) > 40 {
			return fmt.Errorf("natlab: bad name %q", n)
		}
		if names[n] || names[n+"-isp"] {
			return fmt.Errorf("natlab: name %q used twice", n)
		}
		names[n] = true
		return nil
	}
	if len(spec.Routers) > 200 {
		return errors.New("natlab: at most 200 routers")
	}
	for _, r := range spec.Routers {
		if err := valid(r.Name); err != nil {
			return err
		}
		if r.NAT == CGNAT {
			names[r.Name+"-isp"] = true
		}
		if !r.NAT.valid() || r.NAT == None {
			return fmt.Errorf("natlab: router %s: bad NAT type %q", r.Name, r.NAT)
		}
		if r.WAN.Loss < 0 || r.WAN.Loss >= 1 || r.WAN.Delay < 0 {
			return fmt.Errorf("natlab: router %s: bad WAN link %+v", r.Name, r.WAN)
		}
		if r.IPv6 && r.NAT == CGNAT {
			return fmt.Errorf("natlab: router %s: IPv6 is not built for cgnat", r.Name)
		}
		if r.UDPTimeout != 0 && r.UDPTimeout < time.Second {
			return fmt.Errorf("natlab: router %s: UDP timeout under 1s", r.Name)
		}
	}
	for _, h := range spec.Hosts {
		if err := valid(h.Name); err != nil {
			return err
		}
		if h.Router != "" && !slices.ContainsFunc(spec.Routers, func(r RouterSpec) bool { return r.Name == h.Router }) {
			return fmt.Errorf("natlab: host %s: no router %q", h.Name, h.Router)
		}
		if h.Router != "" && !h.WAN.isZero() {
			return fmt.Errorf("natlab: host %s: a WAN link is only for public hosts", h.Name)
		}
		if h.WAN.Loss < 0 || h.WAN.Loss >= 1 || h.WAN.Delay < 0 {
			return fmt.Errorf("natlab: host %s: bad WAN link %+v", h.Name, h.WAN)
		}
	}
	return nil
}

// Prefix is the namespace name prefix of this lab, e.g. "ewf4821a-".
func (l *Lab) Prefix() string { return l.prefix }

// Namespace is the network namespace of a host or router, for
// `ip netns exec`.
func (l *Lab) Namespace(name string) string {
	if h, ok := l.hosts[name]; ok {
		return h.ns
	}
	if r, ok := l.routers[name]; ok {
		return r.ns
	}
	panic("natlab: no host or router " + name)
}

// Addr is a host's own address (behind its router, if any).
func (l *Lab) Addr(hostName string) netip.Addr { return l.host(hostName).addr }

// ServerAddrs are the server host's two public addresses.
func (l *Lab) ServerAddrs() (netip.Addr, netip.Addr) { return serverAddr1, serverAddr2 }

// PublicAddr is the address a router's hosts appear from on the public
// segment (the carrier's for CGNAT).
func (l *Lab) PublicAddr(routerName string) netip.Addr {
	r, ok := l.routers[routerName]
	if !ok {
		panic("natlab: no router " + routerName)
	}
	return r.wan
}

// Hosts lists the host names in spec order, the server first.
func (l *Lab) Hosts() []string {
	names := []string{ServerHost}
	for _, h := range l.spec.Hosts {
		names = append(names, h.Name)
	}
	return names
}

// RouterOf returns the router spec a host sits behind, and false for a
// public host.
func (l *Lab) RouterOf(hostName string) (RouterSpec, bool) {
	h := l.host(hostName)
	if h.router == nil {
		return RouterSpec{}, false
	}
	return h.router.spec, true
}

// Forwarder returns the delay/loss forwarder on the WAN link of a router
// or public host, or nil if the link is plain.
func (l *Lab) Forwarder(name string) *Forwarder {
	if r, ok := l.routers[name]; ok {
		return r.fwd
	}
	if h, ok := l.hosts[name]; ok {
		return h.fwd
	}
	panic("natlab: no router or host " + name)
}

func (l *Lab) host(name string) *host {
	h, ok := l.hosts[name]
	if !ok {
		panic("natlab: no host " + name)
	}
	return h
}

// addNetns creates a namespace with the sysctls every lab node wants: no
// IPv6 (nothing here uses it, and it only adds neighbour chatter) and no
// bridge traffic through the IP hooks.
func (l *Lab) addNetns(name string) (string, error) {
	ns := l.prefix + name
	if err := run("", "ip", "netns", "add", ns); err != nil {
		return "", err
	}
	l.nss = append(l.nss, ns)
	if err := sysctl(ns,
		"net.ipv6.conf.all.disable_ipv6=1",
		"net.ipv6.conf.default.disable_ipv6=1",
		"net.bridge.bridge-nf-call-iptables=0",
		"net.bridge.bridge-nf-call-arptables=0",
	); err != nil {
		return "", err
	}
	return ns, ipn(ns, "link", "set", "lo", "up")
}

// veth creates a veth pair directly in two namespaces, so that no interface
// ever exists in the root namespace, and brings both ends up.
func veth(ns1, if1, ns2, if2 string) error {
	if err := ipn(ns1, "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2); err != nil {
		return err
	}
	if err := ipn(ns1, "link", "set", if1, "up"); err != nil {
		return err
	}
	return ipn(ns2, "link", "set", if2, "up")
}

func bridge(ns, name string) error {
	if err := ipn(ns, "link", "add", name, "type", "bridge", "forward_delay", "0"); err != nil {
		return err
	}
	return ipn(ns, "link", "set", name, "up")
}

func enslave(ns, port, br string) error {
	return ipn(ns, "link", "set", port, "master", br)
}

func (l *Lab) setup() error {
	sw, err := l.addNetns("sw")
	if err != nil {
		return err
	}
	if err := bridge(sw, "br0"); err != nil {
		return err
	}

	// The server: two public addresses on one interface.
	srv, err := l.addNetns(ServerHost)
	if err != nil {
		return err
	}
	if err := veth(srv, "eth0", sw, "srv"); err != nil {
		return err
	}
	if err := enslave(sw, "srv", "br0"); err != nil {
		return err
	}
	for _, a := range []netip.Addr{serverAddr1, serverAddr2} {
		if err := ipn(srv, "addr", "add", netip.PrefixFrom(a, publicNet.Bits()).String(), "dev", "eth0"); err != nil {
			return err
		}
	}
	if err := enableIPv6(srv); err != nil {
		return err
	}
	for _, a := range []netip.Addr{serverAddr6a, serverAddr6b} {
		if err := ipn(srv, "-6", "addr", "add", netip.PrefixFrom(a, publicNet6.Bits()).String(), "dev", "eth0", "nodad"); err != nil {
			return err
		}
	}
	l.hosts[ServerHost] = &host{name: ServerHost, ns: srv, addr: serverAddr1, addr6: serverAddr6a}

	for i, rs := range l.spec.Routers {
		if err := l.addRouter(i+1, rs); err != nil {
			return fmt.Errorf("natlab: router %s: %w", rs.Name, err)
		}
	}
	if err := l.routeIPv6(); err != nil {
		return err
	}
	pub := 0
	for _, hs := range l.spec.Hosts {
		if err := l.addHost(hs, &pub); err != nil {
			return fmt.Errorf("natlab: host %s: %w", hs.Name, err)
		}
	}
	return nil
}

// addRouter builds router number idx (1-based): WAN 203.0.113.(10+idx),
// LAN 10.0.idx.0/24 on bridge lan0. A CGNAT router is a carrier router
// (WAN public, LAN 100.64.idx.0/24) with a home router behind it.
func (l *Lab) addRouter(idx int, rs RouterSpec) error {
	r := &router{
		spec: rs,
		idx:  idx,
		wan:  netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + idx)}),
		lan:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(idx), 1}), 24),
	}
	l.routers[rs.Name] = r
	timeout := rs.UDPTimeout
	if timeout == 0 {
		timeout = 120 * time.Second
	}

	// outer is the namespace whose wan0 faces the public switch.
	outer, err := l.addNetns(rs.Name)
	if err != nil {
		return err
	}
	r.ns = outer
	if rs.NAT == CGNAT {
		if r.isp, err = l.addNetns(rs.Name + "-isp"); err != nil {
			return err
		}
		outer = r.isp
	}
	if r.fwd, err = l.uplink(outer, "wan0", fmt.Sprintf("r%d", idx), rs.WAN); err != nil {
		return err
	}
	if err := ipn(outer, "addr", "add", netip.PrefixFrom(r.wan, publicNet.Bits()).String(), "dev", "wan0"); err != nil {
		return err
	}

	routerSysctls := func(ns string) error {
		kv := []string{"net.ipv4.ip_forward=1"}
		if rs.UDPTimeout != 0 {
			s := int(rs.UDPTimeout / time.Second)
			kv = append(kv,
				fmt.Sprintf("net.netfilter.nf_conntrack_udp_timeout=%d", s),
				fmt.Sprintf("net.netfilter.nf_conntrack_udp_timeout_stream=%d", s))
		}
		return sysctl(ns, kv...)
	}

	natType := rs.NAT
	homeWAN := r.wan
	if rs.NAT == CGNAT {
		// Carrier: LAN 100.64.idx.1/24 towards the home router's WAN .2.
		isp := r.isp
		cgnLAN := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(idx), 1}), 24)
		homeWAN = netip.AddrFrom4([4]byte{100, 64, byte(idx), 2})
		if err := veth(isp, "lan0", r.ns, "wan0"); err != nil {
			return err
		}
		if err := ipn(isp, "addr", "add", cgnLAN.String(), "dev", "lan0"); err != nil {
			return err
		}
		if err := ipn(r.ns, "addr", "add", netip.PrefixFrom(homeWAN, 24).String(), "dev", "wan0"); err != nil {
			return err
		}
		if err := ipn(r.ns, "route", "add", "default", "via", cgnLAN.Addr().String()); err != nil {
			return err
		}
		if err := routerSysctls(isp); err != nil {
			return err
		}
		carrier := natRules{nat: PortRestricted, wan: r.wan, lan: cgnLAN, hairpin: false, timeout: timeout}
		if err := nftLoad(isp, carrier.text()); err != nil {
			return err
		}
		natType = PortRestricted
	}

	if err := bridge(r.ns, "lan0"); err != nil {
		return err
	}
	if err := ipn(r.ns, "addr", "add", r.lan.String(), "dev", "lan0"); err != nil {
		return err
	}
	if err := routerSysctls(r.ns); err != nil {
		return err
	}
	home := natRules{nat: natType, wan: homeWAN, lan: r.lan, hairpin: rs.Hairpin, timeout: timeout}
	if err := nftLoad(r.ns, home.text()); err != nil {
		return err
	}
	if rs.IPv6 {
		return l.addRouterIPv6(r)
	}
	return nil
}

// uplink connects interface ifname of namespace ns to the public switch as
// bridge port port, directly or, for a non-zero link, through a Forwarder:
//
//	ifname <-> {port}a (forwarder) {port}b <-> port (bridge port)
func (l *Lab) uplink(ns, ifname, port string, link Link) (*Forwarder, error) {
	sw := l.prefix + "sw"
	if link.isZero() {
		if err := veth(ns, ifname, sw, port); err != nil {
			return nil, err
		}
		return nil, enslave(sw, port, "br0")
	}
	fa, fb := port+"a", port+"b"
	if err := veth(ns, ifname, sw, fa); err != nil {
		return nil, err
	}
	if err := veth(sw, fb, sw, port); err != nil {
		return nil, err
	}
	for _, i := range []string{fa, fb} {
		if err := ipn(sw, "link", "set", i, "promisc", "on"); err != nil {
			return nil, err
		}
	}
	// The two interfaces that send into the forwarder cut their frames to
	// wire packets themselves: with segmentation offloads on, veth hands
	// over a TCP super-frame of up to 64 KiB (dozens of segments) or a UDP
	// GSO batch as one frame, so a loss decision would take a whole burst,
	// and a TCP sender would see a fraction of the packet loss rate a QUIC
	// sender sees. Link.Loss is per packet, as on a real wire.
	// NATLAB_KEEP_OFFLOADS=1 keeps them, to reproduce figures taken before
	// (loss per super-frame); docs/NATLAB.md, "Throughput".
	for _, i := range []struct{ ns, dev string }{{ns, ifname}, {sw, port}} {
		if os.Getenv("NATLAB_KEEP_OFFLOADS") == "1" {
			break
		}
		if err := noOffloads(i.ns, i.dev); err != nil {
			return nil, err
		}
	}
	f, err := startForwarder(sw, fa, fb, link)
	if err != nil {
		return nil, err
	}
	l.closers = append(l.closers, f.Close)
	return f, enslave(sw, port, "br0")
}

func (l *Lab) addHost(hs HostSpec, pub *int) error {
	ns, err := l.addNetns(hs.Name)
	if err != nil {
		return err
	}
	h := &host{name: hs.Name, ns: ns}
	l.hosts[hs.Name] = h
	if hs.Router == "" {
		*pub++
		if *pub > 100 {
			return errors.New("at most 100 public hosts")
		}
		h.addr = netip.AddrFrom4([4]byte{203, 0, 113, byte(100 + *pub)})
		if h.fwd, err = l.uplink(ns, "eth0", fmt.Sprintf("h%d", *pub), hs.WAN); err != nil {
			return err
		}
		return ipn(ns, "addr", "add", netip.PrefixFrom(h.addr, publicNet.Bits()).String(), "dev", "eth0")
	}
	r := l.routers[hs.Router]
	h.router = r
	r.nextHost++
	if r.nextHost > 250 {
		return errors.New("at most 250 hosts per router")
	}
	a4 := r.lan.Addr().As4()
	a4[3] = byte(1 + r.nextHost)
	h.addr = netip.AddrFrom4(a4)
	port := fmt.Sprintf("h%d", r.nextHost)
	if err := veth(ns, "eth0", r.ns, port); err != nil {
		return err
	}
	if err := enslave(r.ns, port, "lan0"); err != nil {
		return err
	}
	if err := ipn(ns, "addr", "add", netip.PrefixFrom(h.addr, 24).String(), "dev", "eth0"); err != nil {
		return err
	}
	if err := ipn(ns, "route", "add", "default", "via", r.lan.Addr().String()); err != nil {
		return err
	}
	if r.spec.IPv6 {
		return addHostIPv6(h, r)
	}
	return nil
}

// Close stops every process and forwarder of the lab and deletes its
// namespaces (which deletes their links). It is safe to call more than once
// and from a signal handler goroutine; later calls return the first result.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return l.closeErr
	}
	l.closed = true
	defer unregister(l)

	var errs []error
	// Processes first: they keep namespaces alive.
	for _, p := range l.procs {
		p.kill()
	}
	// In-process sockets also keep their namespace alive.
	if l.responder != nil {
		errs = append(errs, l.responder.Close())
	}
	for i := len(l.closers) - 1; i >= 0; i-- {
		errs = append(errs, l.closers[i]())
	}
	errs = append(errs, removeLab(l.prefix, l.nss))
	l.closeErr = errors.Join(errs...)
	return l.closeErr
}

// removeLab kills whatever still runs in the lab's namespaces, deletes them
// and releases the prefix. nss may be nil: then every namespace with the
// prefix goes.
func removeLab(prefix string, nss []string) error {
	all, err := listNetns()
	if err != nil {
		return err
	}
	var mine []string
	for _, ns := range all {
		if strings.HasPrefix(ns, prefix) {
			mine = append(mine, ns)
		}
	}
	for _, ns := range nss {
		if !slices.Contains(mine, ns) {
			mine = append(mine, ns)
		}
	}
	var errs []error
	for _, ns := range mine {
		for _, pid := range netnsPids(ns) {
			// Only processes inside this lab's own namespaces.
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, ns := range mine {
		if _, err := os.Stat(netnsDir + "/" + ns); os.IsNotExist(err) {
			continue
		}
		if err := run("", "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := releasePrefix(prefix); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Leftovers lists what of the lab still exists: namespaces with its prefix,
// root-namespace links with its prefix and its processes that are not yet
// reaped. After Close it must be empty.
func (l *Lab) Leftovers() []string {
	var left []string
	nss, _ := listNetns()
	for _, ns := range nss {
		if strings.HasPrefix(ns, l.prefix) {
			left = append(left, "netns "+ns)
		}
	}
	links, _ := rootLinks()
	for _, ln := range links {
		if strings.HasPrefix(ln, l.prefix) {
			left = append(left, "link "+ln)
		}
	}
	l.mu.Lock()
	procs := slices.Clone(l.procs)
	l.mu.Unlock()
	for _, p := range procs {
		if p.alive() {
			left = append(left, fmt.Sprintf("process %d (%s)", p.Pid(), p.name))
		}
	}
	if _, err := os.Stat(prefixFile(l.prefix)); err == nil {
		left = append(left, "prefix file "+prefixFile(l.prefix))
	}
	return left
}

// MatrixSpec is the lab for the connection matrix: everything a pair of
// peers can sit behind, built once and shared by all pairs.
//
//   - Two sides, "a" and "b", each with one router per NAT type: host
//     MatrixHost(side, nat) behind router MatrixHost(side, nat)+"-gw"; for
//     None the host is on the public segment.
//   - "home": a port-restricted router with hairpinning and two hosts,
//     "home-1" and "home-2" (two devices at home).
//   - "flat": the same without hairpinning, hosts "flat-1" and "flat-2".
//   - "dual-a" and "dual-b": dual-stack networks (RouterSpec.IPv6) whose
//     IPv4 is behind a symmetric NAT, hosts "dual-a-1" and "dual-b-1":
//     only IPv6 can connect them directly.
//   - "short": a port-restricted router whose UDP mappings expire after
//     30 s without outbound traffic, hosts "short-1" to "short-3", to
//     prove keepalives; "far": a plain port-restricted router with hosts
//     "far-1" to "far-3", their peers.
func MatrixSpec() Spec {
	var s Spec
	for _, side := range []string{"a", "b"} {
		for _, n := range NATs {
			h := MatrixHost(side, n)
			if n == None {
				s.Hosts = append(s.Hosts, HostSpec{Name: h})
				continue
			}
			s.Routers = append(s.Routers, RouterSpec{Name: h + "-gw", NAT: n})
			s.Hosts = append(s.Hosts, HostSpec{Name: h, Router: h + "-gw"})
		}
	}
	s.Routers = append(s.Routers,
		RouterSpec{Name: "home", NAT: PortRestricted, Hairpin: true},
		RouterSpec{Name: "flat", NAT: PortRestricted},
		RouterSpec{Name: "short", NAT: PortRestricted, UDPTimeout: 30 * time.Second},
		RouterSpec{Name: "far", NAT: PortRestricted},
		RouterSpec{Name: "dual-a", NAT: Symmetric, IPv6: true},
		RouterSpec{Name: "dual-b", NAT: Symmetric, IPv6: true},
	)
	s.Hosts = append(s.Hosts,
		HostSpec{Name: "home-1", Router: "home"},
		HostSpec{Name: "home-2", Router: "home"},
		HostSpec{Name: "flat-1", Router: "flat"},
		HostSpec{Name: "flat-2", Router: "flat"},
		HostSpec{Name: "short-1", Router: "short"},
		HostSpec{Name: "short-2", Router: "short"},
		HostSpec{Name: "short-3", Router: "short"},
		HostSpec{Name: "far-1", Router: "far"},
		HostSpec{Name: "far-2", Router: "far"},
		HostSpec{Name: "far-3", Router: "far"},
		HostSpec{Name: "dual-a-1", Router: "dual-a"},
		HostSpec{Name: "dual-b-1", Router: "dual-b"},
	)
	return s
}

// MatrixHost names the MatrixSpec host of a side ("a" or "b") and NAT type.
func MatrixHost(side string, n NAT) string { return side + "-" + string(n) }
