// Package punch is the UDP hole-punching state machine of ewf: authenticated
// PUNCH packets in, packets to send out, and Tick(now) for the schedule. It
// owns no socket, no goroutine and no clock; the caller feeds it received
// PUNCH messages and the current time, and sends what it returns
// (docs/PROTOCOL.md §4).
//
// # Protocol
//
// After an introduction both peers hold the same wire.Secret. Each sends
// PUNCH requests to every candidate address of the other (its public UDP
// address first, then its host candidates, both address families). Every
// PUNCH message carries SOURCE_ID, the sender's own ID, and ends in a MAC:
// HMAC-SHA256 keyed by the secret over the message before the MAC
// attribute. A message whose SOURCE_ID is not the expected peer, or whose
// MAC does not verify, is ignored and counted: a stranger without the secret
// cannot make a Machine answer, learn an address or come up. Checking
// SOURCE_ID matters even with a good MAC, because both peers share the key:
// it stops our own requests, reflected back at us, from passing as the
// peer's.
//
// A valid request is answered at once with a success response carrying the
// same transaction ID, sent to the address the request came from — also
// when the peer never advertised that address (its NAT gave it a new port:
// a peer-reflexive candidate, as in ICE, RFC 8445 §7.3.1.3). The address is
// then added to the candidates, and the Machine sends a triggered request
// there at once (RFC 8445 §7.3.1.4), because a request that just arrived
// means the peer's NAT has opened towards us: our own request is most
// likely to get through right now, not at the next scheduled round.
//
// The path is up when a valid success response to one of our own
// outstanding requests arrives: both directions are then proven. The path
// is the address the response came from, which for a peer behind a
// symmetric NAT may differ from the address the request went to. The first
// path up wins and is kept.
//
// # States
//
//	      New
//	       │
//	       ▼
//	┌────────────┐  valid success response to   ┌─────────────┐
//	│  Punching  │── one of our requests ──────▶│  Connected  │
//	└────────────┘  (Path, RTT recorded)        └─────────────┘
//	       │                                     answers valid peer
//	       │ Timeout with no path up             requests (the peer may
//	       ▼                                     still need them); Tick
//	┌────────────┐                               sends nothing more
//	│   Failed   │  terminal: Receive ignores everything (Stats.Late)
//	└────────────┘
//
// In Punching, Tick sends scheduled requests and Receive answers valid
// requests, learns peer-reflexive candidates and sends triggered requests.
// Requests from the peer are answered in every state but Failed, also
// before this side has sent anything (we may be introduced after the peer).
//
// # Schedule
//
// Each candidate has its own schedule, starting when it is added (at New,
// by AddCandidates when the peer signals more through the server, or when a
// peer-reflexive candidate is learned):
//
//	t = 0                         first request, immediately
//	t < FastPeriod (500 ms)       one request every Interval (25 ms)
//	afterwards                    interval × Backoff (2) per request,
//	                              capped at MaxInterval (500 ms)
//	t = Timeout (10 s)            Failed if no path is up; nothing more is sent
//
// With the defaults one candidate gets requests at 0, 25, 50, … 475, 500,
// 550, 650, 850, 1250, 1750, 2250, … 9750 ms: 42 requests of 76 bytes. The
// fast phase is there because the time to connect counts: when the peer's
// NAT drops our first packets until the peer has sent its own, the next
// request after that gets through, so the interval bounds the extra
// latency; and a lost packet costs one interval, not a full timeout.
// Triggered requests take the common case (both sides start within one
// round trip) off the schedule altogether. After the first half second the
// interesting outcomes have happened; the backoff keeps the rest of the
// attempt cheap while still covering a peer that was introduced late or a
// NAT that opens slowly. A triggered request resets its candidate's timer,
// so a peer sending at the same rate does not double our packet rate.
//
// # Bounds
//
// At most MaxCandidates addresses are probed (MaxConfigured from Config and
// AddCandidates together, the rest reserved for peer-reflexive ones); outstanding transaction IDs
// live in a fixed ring of OutstandingWindow entries (a response to an
// older request is an unknown transaction); recently answered peer requests
// live in a fixed ring too. Receive and Tick do not allocate: a flood of
// forged packets costs one HMAC each at most and leaves no state.
//
// Transaction IDs are an 8-byte random prefix, drawn once per Machine from
// Config.Rand, and a 4-byte counter: responses are matched in O(1), and
// every request has its own ID, so the RTT of each response is unambiguous
// (no retransmission of one ID, hence no Karn problem). Transaction IDs are
// not secret and need not be: the MAC is what authenticates.
//
// A request that repeats a transaction ID already seen from a different
// address is a replay (someone captured it and sends it from elsewhere to
// plant a candidate) and is ignored; from the same address it is a
// duplicate and is simply answered again.
//
// A Machine is not safe for concurrent use; the caller serialises calls.
package punch
