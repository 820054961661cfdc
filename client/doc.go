// Package client is the rendezvous client of ewf: it asks ewfd for the
// client's public address (STUN Binding), REGISTERs an ID, BINDs the public
// address, QUERYs and introduces itself to peers, keeps its binding alive,
// and keeps the client's identity (ID and KEYs) in a file.
//
// # Who owns the socket
//
// A Client owns no socket and no goroutine. The caller gives it a Send
// function that writes one datagram (or one TCP frame) to the server, and
// feeds every STUN/X message that came from the server's address to
// HandlePacket. That is how one UDP socket serves the rendezvous client,
// the puncher and QUIC at once (docs/PROTOCOL.md, section 5). Each request
// runs in the caller's goroutine: it registers its transaction ID, sends,
// and waits for HandlePacket to deliver the matching response. DialUDP and
// DialTCP wrap a Client with a socket of its own and one reader goroutine
// for standalone use (the CLI, tests).
//
// # Retransmission
//
// Over UDP a request is retransmitted as RFC 5389 §7.2.1 says: with initial
// RTO R (Config.RTO, 500 ms by default), transmissions go out at 0, R, 3R,
// 7R, 15R, ... (the wait doubles after each) until Config.MaxAttempts (Rc,
// default 7) have been sent, and after the last one the client waits
// Config.LastWait × R (Rm, default 16) more. With the defaults that is
// 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s, giving up at 39.5 s. Every
// retransmission is the same bytes with the same transaction ID: the server
// answers a retransmitted REGISTER it has already carried out with the
// same KEY instead of "ID conflict". Over TCP (Config.Reliable) a request
// is sent once and the client waits Config.Timeout (39.5 s). The caller's
// context bounds all of it: when ctx ends, the request returns at once with
// an error wrapping ctx.Err().
//
// # Proving the KEY
//
// Requests that need a KEY (BIND, introductions, SIGNAL, RELAY) carry a
// TIMESTAMP and a MAC keyed by the KEY instead of the KEY itself
// (docs/PROTOCOL.md §18, Client.RequestWithKey), re-stamped on every
// retransmission, and their answers are accepted only when the server's
// MAC over them verifies; a forged or tampered answer is dropped like any
// invalid one. DialTLS reaches the server's X-over-TLS listener (§19), for
// the REGISTER whose answer carries a new KEY.
//
// Every response is validated before it is accepted (X: decode, the
// per-method attribute rules, same method; STUN: Binding success with
// XOR-MAPPED-ADDRESS, FINGERPRINT if present). An invalid response is
// dropped and remembered; if nothing valid follows, the final timeout error
// also matches ErrBadResponse. Error responses become *ReasonError, which
// matches one sentinel per reason (ErrKeyMismatch, ErrNotRegistered, ...).
package client
