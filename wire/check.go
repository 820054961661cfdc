package wire

// bit returns the presence bit of attribute t.
func bit(t AttrType) uint32 { return 1 << t }

// rule says which attributes a message of one method and class must and
// may carry (docs/PROTOCOL.md, "Methods").
type rule struct {
	required, allowed uint32
}

var (
	bReason  = bit(AttrErrorReason)
	bID      = bit(AttrID)
	bAddr    = bit(AttrNetworkAddress)
	bKey     = bit(AttrKey)
	bSource  = bit(AttrSourceID)
	bSecret  = bit(AttrSecret)
	bCand    = bit(AttrCandidate)
	bMAC     = bit(AttrMAC)
	bRelay   = bit(AttrRelayURL) | bit(AttrRelayUsername) | bit(AttrRelayPassword) | bit(AttrRelayExpiry)
	bTime    = bit(AttrTimestamp)
	bRelayed = bit(AttrRelayed)
	bSigMAC  = bit(AttrSignalMAC)
	// bProof is what an authenticated request carries instead of KEY.
	bProof = bTime | bMAC
	// An error may be authenticated (MAC keyed by the request's KEY), and
	// the stale-request error carries the server's clock.
	errorMsg = rule{required: bReason, allowed: bReason | bMAC | bTime}
)

// ruleFor returns the rule for t, or ok false when the method is unknown or
// not defined for the class.
func ruleFor(t Type) (r rule, err error) {
	if t.Class == ClassError {
		// Every request that is answered at all can be answered with an
		// error, and the error echoes the request's method: a request of
		// a method the server does not know (ReasonUnknownMethod), and
		// also an INTRODUCE request, which is not defined (INTRODUCE is
		// an indication) and so is answered 0xC115, ReasonUnknownMethod.
		return errorMsg, nil
	}
	switch t.Method {
	case MethodRegister:
		switch t.Class {
		case ClassRequest:
			return rule{bID, bID}, nil
		case ClassSuccess:
			return rule{bKey, bKey}, nil
		}
	case MethodBind:
		switch t.Class {
		case ClassRequest:
			return rule{bID | bAddr, bID | bKey | bAddr | bProof}, nil
		case ClassSuccess:
			return rule{0, bMAC}, nil
		}
	case MethodQuery:
		switch t.Class {
		case ClassRequest:
			return rule{bID, bID | bSource | bKey | bCand | bProof}, nil
		case ClassSuccess:
			return rule{bAddr, bAddr | bSecret | bCand | bMAC}, nil
		}
	case MethodIntroduce:
		if t.Class == ClassIndication {
			return rule{bSource | bSecret | bAddr, bSource | bSecret | bAddr | bCand}, nil
		}
	case MethodRelay:
		switch t.Class {
		case ClassRequest:
			return rule{bID, bID | bKey | bProof}, nil
		case ClassSuccess:
			return rule{bRelay, bRelay | bMAC}, nil
		}
	case MethodPunch:
		// Requests and success responses probe a path; indications keep
		// a chosen path's NAT mappings alive without asking for an answer.
		return rule{bSource | bMAC, bSource | bMAC}, nil
	case MethodSignal:
		// Candidates after the introduction, relayed by the server
		// (signal.go). What is signalled is optional: an empty SIGNAL
		// still tells the peer that this side is alive and punching.
		switch t.Class {
		case ClassRequest:
			return rule{bID | bSource | bSigMAC, bID | bSource | bKey | bProof | bSigMAC | signalled}, nil
		case ClassIndication:
			return rule{bSource | bSigMAC, bSource | bSigMAC | signalled}, nil
		case ClassSuccess:
			return rule{0, bMAC}, nil // MAC when the request proved its KEY by MAC (§18.4)
		}
	default:
		return rule{}, errMethod
	}
	return rule{}, errClass
}

// Check enforces the per-method rules of docs/PROTOCOL.md on a decoded
// message: the method must be known and defined for the class, required
// attributes present, no other known attribute present, and the pairings
// below. The error matches ErrUnknownMethod or ErrInvalidAttributes.
//
//   - BIND request: exactly one NETWORK_ADDRESS; the proof of the KEY,
//     either KEY itself or TIMESTAMP and MAC, never both.
//   - RELAY and SIGNAL requests: the proof of the KEY, as BIND.
//   - QUERY request: SOURCE_ID and a proof of its KEY (KEY, or TIMESTAMP
//     and MAC) together or not at all; CANDIDATE only with them (only an
//     introduction forwards candidates).
func (m *Message) Check() error {
	r, err := ruleFor(m.Type)
	if err != nil {
		return err
	}
	if m.present&r.required != r.required {
		return errMissing
	}
	if m.present&^r.allowed != 0 {
		return errUnexpected
	}
	switch m.Type {
	case Type{MethodBind, ClassRequest}:
		if m.NumAddresses != 1 {
			return errUnexpected
		}
		return m.checkProof(true)
	case Type{MethodRelay, ClassRequest}, Type{MethodSignal, ClassRequest}:
		return m.checkProof(true)
	case Type{MethodQuery, ClassRequest}:
		intro := m.Has(AttrSourceID)
		if err := m.checkProof(intro); err != nil {
			return err
		}
		if m.Has(AttrCandidate) && !intro {
			return errUnexpected
		}
	}
	return nil
}

// checkProof checks the proof of a KEY in a request: with want, exactly one
// of KEY or the pair TIMESTAMP + MAC; without, neither. A request carrying
// KEY and MAC at once is refused rather than half-trusted: the point of the
// MAC is that the KEY does not travel.
func (m *Message) checkProof(want bool) error {
	key, ts, mac := m.Has(AttrKey), m.Has(AttrTimestamp), m.Has(AttrMAC)
	switch {
	case key && (ts || mac):
		return errUnexpected
	case ts != mac:
		return errMissing
	case want != (key || mac):
		return errMissing
	}
	return nil
}

// IsIntroduction reports whether m is a QUERY request that asks the server
// to introduce the querier to the peer (it carries SOURCE_ID and a proof of
// its KEY: KEY, or TIMESTAMP and MAC).
func (m *Message) IsIntroduction() bool {
	return m.Type == Type{MethodQuery, ClassRequest} && m.Has(AttrSourceID) && (m.Has(AttrKey) || m.Has(AttrMAC))
}

// HasIntegrity reports whether m proves its KEY with TIMESTAMP and MAC
// (docs/PROTOCOL.md §17) instead of carrying it. Only meaningful on a
// message that passed Check.
func (m *Message) HasIntegrity() bool { return m.Has(AttrMAC) && m.Has(AttrTimestamp) }
