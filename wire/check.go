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
	errorMsg = rule{required: bReason, allowed: bReason}
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
			return rule{bID | bKey | bAddr, bID | bKey | bAddr}, nil
		case ClassSuccess:
			return rule{0, 0}, nil
		}
	case MethodQuery:
		switch t.Class {
		case ClassRequest:
			return rule{bID, bID | bSource | bKey | bCand}, nil
		case ClassSuccess:
			return rule{bAddr, bAddr | bSecret | bCand}, nil
		}
	case MethodIntroduce:
		if t.Class == ClassIndication {
			return rule{bSource | bSecret | bAddr, bSource | bSecret | bAddr | bCand}, nil
		}
	case MethodRelay:
		switch t.Class {
		case ClassRequest:
			return rule{bID | bKey, bID | bKey}, nil
		case ClassSuccess:
			return rule{bRelay, bRelay}, nil
		}
	case MethodPunch:
		// Requests and success responses probe a path; indications keep
		// a chosen path's NAT mappings alive without asking for an answer.
		return rule{bSource | bMAC, bSource | bMAC}, nil
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
//   - BIND request: exactly one NETWORK_ADDRESS.
//   - QUERY request: SOURCE_ID and KEY together or not at all; CANDIDATE
//     only with them (only an introduction forwards candidates).
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
	switch {
	case m.Type == Type{MethodBind, ClassRequest} && m.NumAddresses != 1:
		return errUnexpected
	case m.Type == Type{MethodQuery, ClassRequest}:
		intro := m.Has(AttrSourceID)
		if intro != m.Has(AttrKey) {
			return errMissing
		}
		if m.Has(AttrCandidate) && !intro {
			return errUnexpected
		}
	}
	return nil
}

// IsIntroduction reports whether m is a QUERY request that asks the server
// to introduce the querier to the peer (it carries SOURCE_ID and KEY).
func (m *Message) IsIntroduction() bool {
	return m.Type == Type{MethodQuery, ClassRequest} && m.Has(AttrSourceID) && m.Has(AttrKey)
}
