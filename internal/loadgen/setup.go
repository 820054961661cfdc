package loadgen

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
)

// setupTries is how often a setup request is sent before giving up; each
// try waits Config.Timeout.
const setupTries = 3

// ErrNoAnswer is matched by the error of a setup step that got no valid
// answer within setupTries × Timeout.
var ErrNoAnswer = errors.New("loadgen: no answer from server")

// setup gives the socket an identity on the server, as a real client
// would: REGISTER a random ID, learn the socket's address with STUN, BIND
// the ID to it. It runs before the clock starts.
func (w *worker) setup() error {
	var id wire.ID
	if _, err := rand.Read(id[:]); err != nil {
		return err
	}
	m := &w.xreq

	m.Reset()
	m.Type = wire.Type{Method: wire.MethodRegister, Class: wire.ClassRequest}
	m.SetID(id)
	r, err := w.exchangeX(m, nil)
	if err != nil {
		return fmt.Errorf("REGISTER: %w", err)
	}
	key := r.Key // r is overwritten by the next exchange

	addr, err := w.learnAddress()
	if err != nil {
		return fmt.Errorf("STUN: %w", err)
	}
	w.self = peer{id: id, key: key, addr: addr}

	m.Reset()
	m.Type = wire.Type{Method: wire.MethodBind, Class: wire.ClassRequest}
	m.SetID(id)
	w.prove(m, -1)
	if err := m.AddAddress(wire.Address{Transport: wire.TransportUDP, AddrPort: addr}); err != nil {
		return fmt.Errorf("BIND %v: %w", addr, err)
	}
	if _, err := w.exchangeX(m, nil); err != nil {
		return fmt.Errorf("BIND: %w", err)
	}
	w.refresh = refreshEvery
	return nil
}

// exchangeX sends request m (its transaction ID is set here) until a
// response with the same ID arrives, and returns it decoded. An error
// response becomes an error naming its reason. check, if not nil, vets a
// success response further.
func (w *worker) exchangeX(m *wire.Message, check func(*wire.Message) error) (*wire.Message, error) {
	w.seq++
	m.TransactionID = w.txid(w.seq)
	if m.Has(wire.AttrTimestamp) {
		w.out = w.sig.Append(w.out[:0], m, w.self.key[:])
	} else {
		w.out = m.AppendTo(w.out[:0])
	}
	var resp *wire.Message
	err := w.exchange(func(b []byte) (bool, error) {
		r := &w.xm
		if wire.Classify(b) != wire.KindX || r.Decode(b) != nil || r.TransactionID != m.TransactionID {
			return false, nil // not ours: keep waiting
		}
		if err := r.Check(); err != nil {
			return true, fmt.Errorf("invalid response: %w", err)
		}
		if r.Type.Method != m.Type.Method {
			return true, fmt.Errorf("answered with %v", r.Type)
		}
		if r.Type.Class == wire.ClassError {
			return true, fmt.Errorf("server answered %q (reason %d)", r.Reason, uint32(r.Reason))
		}
		if r.Type.Class != wire.ClassSuccess {
			return true, fmt.Errorf("answered with %v", r.Type)
		}
		resp = r
		if check != nil {
			return true, check(r)
		}
		return true, nil
	})
	return resp, err
}

// learnAddress asks the server for the socket's address with a STUN
// Binding request.
func (w *worker) learnAddress() (netip.AddrPort, error) {
	w.seq++
	tx := w.txid(w.seq)
	w.out = appendBindingRequest(w.out[:0], tx)
	var addr netip.AddrPort
	err := w.exchange(func(b []byte) (bool, error) {
		if wire.Classify(b) != wire.KindSTUN || wire.MessageLength(b) != len(b) {
			return false, nil
		}
		w.sm.Raw = b
		if w.sm.Decode() != nil || w.sm.TransactionID != tx {
			return false, nil
		}
		if w.sm.Type != stun.BindingSuccess {
			return true, fmt.Errorf("answered with %v", w.sm.Type)
		}
		if err := w.xa.GetFrom(&w.sm); err != nil {
			return true, fmt.Errorf("XOR-MAPPED-ADDRESS: %w", err)
		}
		ip, ok := netip.AddrFromSlice(w.xa.IP)
		if !ok {
			return true, errors.New("XOR-MAPPED-ADDRESS has no valid IP")
		}
		addr = netip.AddrPortFrom(ip.Unmap(), uint16(w.xa.Port))
		return true, nil
	})
	return addr, err
}

// exchange sends w.out and feeds every datagram that arrives to accept
// until accept reports done, retransmitting after each Timeout.
func (w *worker) exchange(accept func([]byte) (done bool, err error)) error {
	for range setupTries {
		if _, err := w.conn.Write(w.out); err != nil && errors.Is(err, net.ErrClosed) {
			return err
		}
		if err := w.conn.SetReadDeadline(time.Now().Add(w.cfg.Timeout)); err != nil {
			return err
		}
		for {
			n, err := w.conn.Read(w.buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			if err != nil {
				continue // ICMP unreachable: retry after the timeout
			}
			if done, err := accept(w.buf[:n]); done {
				return err
			}
		}
	}
	return fmt.Errorf("%w after %d tries of %v", ErrNoAnswer, setupTries, w.cfg.Timeout)
}
