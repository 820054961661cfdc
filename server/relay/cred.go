package relay

import (
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // the TURN REST scheme is HMAC-SHA1; HMAC-SHA1 is not broken as a MAC
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strconv"
	"time"
)

// Credentials in the TURN REST API scheme (draft-uberti-behave-turn-rest-00),
// which coturn accepts with use-auth-secret and pion/turn with
// LongTermTURNRESTAuthHandler:
//
//	username = decimal(expiry, Unix seconds) ":" ID as 32 lower-case hex digits
//	password = base64(HMAC-SHA1(key = shared secret, data = username))
//
// ewfd mints them (RELAY, docs/PROTOCOL.md §17) for a client that proved
// its KEY; the TURN server checks them with the same secret and never talks
// to ewfd. The ID in the username scopes them to one registration.

// ErrUsername is returned for a username that is not expiry:ID-hex.
var ErrUsername = errors.New("relay: username is not expiry:ID")

// UsernameLen is the length of a username with a 10-digit expiry.
const UsernameLen = 10 + 1 + 32

// AppendUsername appends the username for id, valid until expiry, to b.
func AppendUsername(b []byte, expiry time.Time, id [16]byte) []byte {
	b = strconv.AppendInt(b, expiry.Unix(), 10)
	b = append(b, ':')
	return hex.AppendEncode(b, id[:])
}

// AppendPassword appends the password of username under secret to b.
func AppendPassword(b []byte, secret, username []byte) []byte {
	m := hmac.New(sha1.New, secret)
	m.Write(username)
	var sum [sha1.Size]byte
	return base64.StdEncoding.AppendEncode(b, m.Sum(sum[:0]))
}

// ParseUsername splits a username into its expiry and ID.
func ParseUsername(u string) (expiry time.Time, id [16]byte, err error) {
	i := len(u) - 33
	if i < 1 || u[i] != ':' {
		return time.Time{}, id, ErrUsername
	}
	sec, err := strconv.ParseInt(u[:i], 10, 64)
	if err != nil || sec <= 0 {
		return time.Time{}, id, ErrUsername
	}
	if _, err := hex.Decode(id[:], []byte(u[i+1:])); err != nil {
		return time.Time{}, id, ErrUsername
	}
	if hex.EncodeToString(id[:]) != u[i+1:] {
		// Upper-case hex would name the same ID with another username,
		// and so another password: one ID, one spelling.
		return time.Time{}, id, ErrUsername
	}
	return time.Unix(sec, 0), id, nil
}
