// Command ewf connects two hosts directly, through their NATs, with the
// help of an ewfd rendezvous server.
//
//	ewf id      [--upgrade]                print this host's ID (--upgrade: make it key-bound)
//	ewf stun    --server HOST:PORT         print this host's public address
//	ewf nat     --server HOST:PORT         classify this host's NAT (RFC 5780)
//	ewf query   --server HOST:PORT PEERID  print a peer's bound addresses
//	ewf listen  --server HOST:PORT         wait for one peer, then pipe stdin/stdout
//	ewf connect --server HOST:PORT PEERID  connect to a peer, then pipe stdin/stdout
//	ewf listen  --expose [LABEL=]tcp:HOST:PORT ...       offer local services to peers
//	ewf connect --forward HOST:PORT[=LABEL] ... PEERID   reach them from local ports
//	ewf status                             print the running listeners' bindings and connections
//	ewf demo                               run a server and two peers on loopback
//	ewf bench   --server HOST:PORT         load-test a server
//
// Status goes to stderr as one key=value line per event, for scripts:
//
//	ready id=<32 hex> public=<ip:port> [udp=blocked]
//	connected peer=<32 hex> transport=<udp|tcp> path=<direct|relay> [relay=<ip:port> relay_transport=<udp|tcp>] remote=<ip:port> rtt_ms=<n> auth=<key|secret>
//	path peer=<32 hex> path=direct remote=<ip:port> rtt_ms=<n>  (a relayed connection moved to a direct path)
//	refused peer=<32 hex> reason=peer-auth msg="..."     (listen: a peer failed authentication or --allow)
//	upgraded previous=<32 hex> id=<32 hex> auth=key      (id --upgrade)
//	warning msg="..."                                    (legacy IDs in --allow, a legacy ID that must upgrade)
//	accepted peer=<32 hex> transport=<udp|tcp> path=<direct|relay> [relay=<ip:port> relay_transport=<udp|tcp>] remote=<ip:port> rtt_ms=<n>  (listen: every peer)
//	refused peer=<32 hex> transport=<udp|tcp> reason=<max-peers|busy>  (listen)
//	closed peer=<32 hex> transport=<udp|tcp> seconds=<n> [err="..."]  (listen)
//	error reason=<word> msg="..."
//
// A connector not on the listener's --allow list gets "error
// reason=peer-auth" without a "connected" line (the listener refuses at the
// introduction). "connected" is printed when the connector's handshake is
// done, before the listener's verdict on the connector's certificate
// arrives (docs/PROTOCOL.md §22.4): if the listener then refuses it (an
// impostor a lying server introduced), "error reason=peer-auth" follows.
//
// Forwarding adds:
//
//	expose label=<label|-> target=<host:port> proto=<tcp|udp>        (listener, per service)
//	forward local=<host:port> label=<label|-> proto=<tcp|udp>        (connector, per local port)
//	refused local=<host:port> label=<l> reason=<refused|no-service|unsupported|no-answer> msg="..."
//	refused peer=<32 hex> label=<l> target=<host:port> reason=<word> msg="..."   (listener)
//	flow peer=<32 hex> label=<l> target=<host:port> proto=udp       (listener, per UDP flow)
//	disconnected peer=<32 hex> reason=<word> msg="..."              (listener; it goes on serving)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ewf-project/ewf"
)

const usage = `ewf connects two hosts directly, through their NATs.

Usage:
  ewf id      [--identity FILE] [--upgrade]          print this host's ID; --upgrade makes it key-bound
  ewf stun    --server HOST:PORT                     print this host's public address
  ewf nat     --server HOST:PORT                     what this host's NAT is, and what that means
  ewf query   --server HOST:PORT PEERID              print a peer's bound addresses
  ewf listen  --server HOST:PORT [--identity FILE] [--allow FILE]   wait for a peer, pipe stdin/stdout
  ewf connect --server HOST:PORT [--identity FILE] [--transport udp|tcp] PEERID
  ewf listen  --server HOST:PORT --expose [LABEL=][tcp:|udp:]HOST:PORT ...   offer services
  ewf connect --server HOST:PORT --forward [tcp:|udp:]HOST:PORT[=LABEL] ... PEERID
  ewf status  [--status-dir DIR]                     the running listeners: bindings, connections
  ewf demo                                           see it work on loopback
  ewf bench   --server HOST:PORT [--mode stun|bind|query]   load-test a server

--server defaults to $EWF_SERVER. Run "ewf COMMAND --help" for a command's flags.
Status lines on stderr: "ready ...", "connected ...", "error reason=... msg=...".
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "id":
		err = runID(args)
	case "stun":
		err = runSTUN(ctx, args)
	case "nat":
		err = runNAT(ctx, args, os.Stdout)
	case "query":
		err = runQuery(ctx, args)
	case "listen":
		err = runListen(ctx, args)
	case "connect":
		err = runConnect(ctx, args)
	case "status":
		err = runStatus(args, os.Stdout)
	case "demo":
		err = runDemo(ctx, args)
	case "bench":
		err = runBench(ctx, args)
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		err = usageError(fmt.Sprintf("unknown command %q", cmd))
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		status("error", "reason", reasonWord(err), "msg", fmt.Sprintf("%q", err.Error()))
		if _, ok := err.(usageError); ok {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a mistake in the command line.
type usageError string

func (e usageError) Error() string { return string(e) }

// parse parses flags that may come before or after the positional
// arguments, and returns the positionals.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError(err.Error())
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// status prints one key=value status line on stderr. Values are printed
// as given; callers quote those that may hold spaces.
// readyKV is the ready line's fields: the ID and the public address, the
// TCP one with udp=blocked when UDP to the server has no answer (then
// every connection goes through the relay, docs/PROTOCOL.md §23).
func readyKV(n *ewf.Node) []string {
	if n.UDPBlocked() {
		pub := "none"
		if a, ok := n.PublicTCPAddr(); ok {
			pub = a.String()
		}
		return []string{"id", n.ID().String(), "public", pub, "udp", "blocked"}
	}
	return []string{"id", n.ID().String(), "public", n.PublicAddr().String()}
}

func status(event string, kv ...string) {
	var b strings.Builder
	b.WriteString(event)
	for i := 0; i+1 < len(kv); i += 2 {
		b.WriteString(" " + kv[i] + "=" + kv[i+1])
	}
	fmt.Fprintln(os.Stderr, b.String())
}

// pipe copies stdin to c and c to stdout until both directions end.
func pipe(c interface {
	io.ReadWriter
	CloseWrite() error
	Close() error
}, in io.Reader, out io.Writer) error {
	errc := make(chan error, 2)
	go func() {
		_, err := io.Copy(c, in)
		if cerr := c.CloseWrite(); err == nil {
			err = cerr
		}
		errc <- err
	}()
	go func() {
		_, err := io.Copy(out, c)
		errc <- err
	}()
	var first error
	for range 2 {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	if err := c.Close(); first == nil {
		first = err
	}
	return first
}

// progress prints dots on a terminal while a slow step runs.
func progress(what string) (stop func()) {
	fi, err := os.Stderr.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		fmt.Fprint(os.Stderr, what)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				fmt.Fprint(os.Stderr, ".")
			case <-done:
				fmt.Fprintln(os.Stderr)
				return
			}
		}
	}()
	return func() { close(done); <-finished }
}
