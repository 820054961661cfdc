// Package store defines where ewfd keeps registrations: the (ID, KEY) pairs
// handed out by REGISTER and checked by every BIND and QUERY.
//
// The server codes against the small Store interface below, so that the
// embedded default (package store/bolt, one bbolt file per ewfd) and the
// backend shared between several servers (package store/redis, which also
// implements Shared: bindings and messages between servers) are
// interchangeable without touching the protocol code. The interface is shaped by the two paths that matter:
//
//   - The write path, Register, must be durable before the client hears
//     "success" (kill -9 at any moment loses no acknowledged registration),
//     yet must never stall the packet reader on a disk flush. So Register only
//     reserves the ID and queues the record; the backend commits queued
//     records in groups (one fsync for many registrations) and reports each
//     outcome through a callback.
//   - The read path, Lookup and Touch, runs for every BIND and QUERY, so it is
//     served from memory without allocating. Touch is persisted lazily:
//     expiry works in days, and a crash that loses the last minute of
//     touches costs nothing for clients that keep binding, as they are
//     touched again after the restart.
//
// Nothing here knows about the network or the wire format: IDs and KEYs are
// plain 16-byte arrays.
package store

import (
	"context"
	"errors"
	"time"
)

// ID is the random 128-bit identifier a client picks in REGISTER.
type ID = [16]byte

// Key is the 128-bit secret the server makes for an ID in REGISTER.
type Key = [16]byte

// DefaultMaxIdle is how long a registration lives without a BIND before it
// expires, unless configured otherwise.
const DefaultMaxIdle = 30 * 24 * time.Hour

// Errors a Store reports. Backends return these values (possibly wrapped), so
// callers test with errors.Is.
var (
	// ErrExists: the ID is already registered, or an earlier Register of the
	// same ID is still being committed.
	ErrExists = errors.New("store: id already registered")
	// ErrBusy: the commit queue is full; nothing was recorded. The disk is not
	// keeping up, so the right reaction is to drop the request (the client
	// retransmits) rather than to queue more work.
	ErrBusy = errors.New("store: commit queue full")
	// ErrFull: the configured maximum number of registrations is reached.
	ErrFull = errors.New("store: registration limit reached")
	// ErrClosed: the store was closed. It is not net.ErrClosed because this
	// package keeps out of the network; the server maps it if it must.
	ErrClosed = errors.New("store: closed")
	// ErrUnavailable: a shared backend could not be reached or did not
	// confirm the write; nothing is acknowledged. The server answers "try
	// again later" (wire.ReasonTryLater) and recovers when the backend does.
	ErrUnavailable = errors.New("store: backend unavailable, try again later")
)

// Store holds registrations. All methods are safe for concurrent use.
type Store interface {
	// Register durably records id→key with now as its last use.
	//
	// done is called exactly once with the outcome. It must not block and
	// must not call Close or Expire: it may run on the store's committer
	// goroutine, which delays every registration queued behind it and which
	// those methods wait for. The outcomes:
	//   - nil once the record is on disk: only then may the server reply
	//     success. From that moment Lookup finds the ID.
	//   - ErrExists, ErrBusy, ErrFull or ErrClosed, when the request is
	//     refused up front. Then done runs on the caller's goroutine before
	//     Register returns, because there is no queue slot to hand it to.
	//   - any other error when the commit failed; the ID is released again.
	//
	// Register never waits for disk I/O: this is what lets the server keep
	// reading packets while a group commit is in flight.
	Register(id ID, key Key, now time.Time, done func(error))

	// Lookup returns the key of a committed registration. It is the hot path
	// (every BIND and QUERY): in memory, no allocation. IDs still being
	// committed are not found, because their client cannot know the key yet.
	Lookup(id ID) (key Key, ok bool)

	// Touch records that id was used at now (a BIND). It is persisted
	// lazily, in the background and at Close, and does not allocate.
	// Unknown IDs are ignored.
	Touch(id ID, now time.Time)

	// Expire deletes registrations idle since before cutoff and returns how
	// many it deleted. It does not delete one whose use after cutoff was
	// recorded; a backend may keep an idle one a little longer to guarantee
	// that (the bolt one: up to an hour, its touch resolution). A use whose
	// Touch was lost in a crash is not recorded.
	Expire(cutoff time.Time) (int, error)

	// Len returns the number of registrations held, including those still
	// being committed.
	Len() int

	// Close flushes pending touches, waits for in-flight commits (their done
	// callbacks run before Close returns), stops the store's goroutines and
	// closes its files. Register after Close calls done(ErrClosed).
	Close() error
}

// RegisterSync is Register for tools and tests: it waits for the outcome.
func RegisterSync(s Store, id ID, key Key, now time.Time) error {
	ch := make(chan error, 1)
	s.Register(id, key, now, func(err error) { ch <- err })
	return <-ch
}

// Binding is one client's live address on one transport, as one server
// shares it with the others through a Shared store. It has no pointers
// besides Server, which is the sharing server's constant name, so queueing
// one does not allocate.
type Binding struct {
	// Server names the server the client bound at: the one whose socket
	// the client's NAT has open, and the one to Send messages for the
	// client to.
	Server string
	Addr   [16]byte // IPv6 or IPv4-mapped
	Port   uint16
	Is4    bool  // Addr is IPv4 (mapped)
	Via    uint8 // the UDP socket it came in on, at Server
}

// Shared is a Store that several servers use at once (store/redis). Besides
// registrations it carries bindings and messages between servers, so that a
// QUERY at any server finds a client bound at another, and an introduction
// leaves from the server whose socket the target's NAT has open.
//
// Lookup stays the hot path and reads a local cache; what the cache does not
// hold the server asks for with Fetch, off the packet path. The backend
// states how stale its cache may be (see its package).
type Shared interface {
	Store

	// Fetch reads id's registration from the backend, bypassing the local
	// cache, and refills the cache with it. It blocks for a round trip:
	// call it off the packet path. ok false with a nil error means not
	// registered. A backend failure matches ErrUnavailable.
	Fetch(ctx context.Context, id ID) (key Key, ok bool, err error)

	// PutBinding queues b as id's binding on transport tr (0 UDP, 1 TCP)
	// for ttl. It never blocks and does not allocate: bindings are written
	// in batches in the background, and when the queue is full or the
	// backend down, the binding is not shared (reported false); the
	// client's next refresh tries again.
	PutBinding(id ID, tr int, b Binding, ttl time.Duration) bool

	// LastFailure is the last time a binding was not shared (queue full,
	// backend down, a batch that failed), zero if never. The server
	// writes a binding again at its next BIND if that BIND's predecessor
	// came before it, since its write may be lost. It does not allocate.
	LastFailure() time.Time

	// Bindings reads id's live shared bindings, by transport, and in the
	// same round trip id's registration, refreshing the local cache as
	// Fetch does (so that Lookup then tells "not registered" from "not
	// bound"). It blocks.
	Bindings(ctx context.Context, id ID) (b [2]Binding, ok [2]bool, err error)

	// Send delivers msg to the server named to, if it listens (Listen).
	// delivered is false when no server of that name listens: it is gone.
	// Delivery is at most once and not acknowledged by the receiver.
	Send(ctx context.Context, to string, msg []byte) (delivered bool, err error)

	// Listen subscribes this process as server name: every msg sent to
	// name is passed to fn, one at a time, on one goroutine, until Close.
	// msg is only valid during the call. It returns once subscribed.
	Listen(name string, fn func(msg []byte)) error
}
