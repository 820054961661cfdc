// Package natlab builds an emulated Internet inside network namespaces, with
// NAT routers of every RFC 4787 kind, so that tests can run the real ewfd
// and ewf binaries through them.
//
// A lab is declared with a Spec and built by New. Every node is a network
// namespace named Prefix()+name; links are veth pairs created directly in
// their namespaces (never in the root namespace); NAT is nftables loaded
// with `nft -f -` into each router namespace:
//
//	server: eth0 203.0.113.1 + .2              hN: public host 203.0.113.(100+N)
//	     |                                       |
//	sw: br0 ==+===============+==================+====  public segment 203.0.113.0/24
//	          |               |
//	          |          [Forwarder]  delay/loss on a WAN link (optional)
//	          |               |
//	M-isp: wan0 203.0.113.(10+M)        N: wan0 203.0.113.(10+N)
//	       lan0 100.64.M.1/24              nft table ewfnat
//	          |                            lan0 (bridge) 10.0.N.1/24
//	M: wan0 100.64.M.2                       |               |
//	   lan0 10.0.M.1/24                host 10.0.N.2    host 10.0.N.3
//	          |
//	   host 10.0.M.2
//
// Probe and Verify classify what a host behind a router actually gets
// (RFC 5780 style, with an in-process responder on the server's two
// addresses and ports 3490/3491), so a test can check the lab before it
// trusts it. Start runs a program in a host and collects its stderr status
// lines for WaitLine. Close (registered with t.Cleanup, and run on SIGINT or
// SIGTERM) kills every process and deletes every namespace; labs of
// processes that died anyway are removed by the next New.
//
// The package's own tests use the lab for what it was built for.
// TestMatrix runs the real `ewf listen` and `ewf connect` behind every pair
// of NAT types (MatrixSpec), over UDP and TCP, and checks each outcome
// against an expected table (wantMatrix), the remote addresses, 256 KiB
// each way and ewfd's counters; it also covers two peers behind one NAT and
// keepalives behind a 30 s NAT. BenchmarkConnect times connect per pair
// with 20 ms one-way delay on every uplink.
//
// docs/NATLAB.md has the nftables design of each NAT type and the results.
package natlab
