//! Byte encodings: the node identity, foca's header and member records, metadata records and
//! our own messages. Every decoder checks a length against what is left (and against a fixed
//! bound) before reading or allocating, and returns [`DecodeError`] instead of panicking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut};
use foca::{Header, Member, Message, State};

use crate::vivaldi::{Coordinate, DIMENSIONS};
use crate::{Identity, NodeId};

/// Why bytes from the network were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended in the middle of a field.
    #[error("truncated input: needed {needed} more bytes")]
    Truncated {
        /// Bytes missing.
        needed: usize,
    },
    /// A tag byte named no known variant.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// Which field.
        what: &'static str,
        /// The value found.
        tag: u8,
    },
    /// A length exceeded its bound.
    #[error("{what} too long: {len} > {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Declared length.
        len: usize,
        /// Bound.
        max: usize,
    },
    /// Text that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A value outside its valid range (NaN coordinate, …).
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// Bytes left after the message.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

pub(crate) fn need(buf: &impl Buf, n: usize) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        Err(DecodeError::Truncated {
            needed: n - buf.remaining(),
        })
    } else {
        Ok(())
    }
}

pub(crate) fn get_u8(buf: &mut impl Buf) -> Result<u8, DecodeError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}
pub(crate) fn get_u16(buf: &mut impl Buf) -> Result<u16, DecodeError> {
    need(buf, 2)?;
    Ok(buf.get_u16())
}
pub(crate) fn get_u32(buf: &mut impl Buf) -> Result<u32, DecodeError> {
    need(buf, 4)?;
    Ok(buf.get_u32())
}
pub(crate) fn get_u64(buf: &mut impl Buf) -> Result<u64, DecodeError> {
    need(buf, 8)?;
    Ok(buf.get_u64())
}
pub(crate) fn get_f32(buf: &mut impl Buf) -> Result<f32, DecodeError> {
    need(buf, 4)?;
    Ok(buf.get_f32())
}
pub(crate) fn get_f64(buf: &mut impl Buf) -> Result<f64, DecodeError> {
    need(buf, 8)?;
    Ok(buf.get_f64())
}

/// A string with a one-byte length prefix, at most `max` bytes.
pub(crate) fn get_str(
    buf: &mut impl Buf,
    what: &'static str,
    max: usize,
) -> Result<String, DecodeError> {
    let len = usize::from(get_u8(buf)?);
    if len > max {
        return Err(DecodeError::TooLong { what, len, max });
    }
    need(buf, len)?;
    let mut v = vec![0; len];
    buf.copy_to_slice(&mut v);
    String::from_utf8(v).map_err(|_| DecodeError::NotUtf8(what))
}

pub(crate) fn put_str(buf: &mut impl BufMut, s: &str) {
    // Callers validated `s.len() <= 255`.
    buf.put_u8(s.len() as u8);
    buf.put_slice(s.as_bytes());
}

pub(crate) fn put_addr(buf: &mut impl BufMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16(addr.port());
}

pub(crate) fn get_addr(buf: &mut impl Buf) -> Result<SocketAddr, DecodeError> {
    let ip = match get_u8(buf)? {
        4 => {
            need(buf, 4)?;
            let mut o = [0; 4];
            buf.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            need(buf, 16)?;
            let mut o = [0; 16];
            buf.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "address family",
                tag,
            });
        }
    };
    Ok(SocketAddr::new(ip, get_u16(buf)?))
}

pub(crate) fn put_identity(buf: &mut impl BufMut, id: &Identity) {
    buf.put_slice(&id.id.0);
    put_addr(buf, &id.addr);
    buf.put_u32(id.bump);
}

pub(crate) fn get_identity(buf: &mut impl Buf) -> Result<Identity, DecodeError> {
    need(buf, 32)?;
    let mut id = [0; 32];
    buf.copy_to_slice(&mut id);
    let addr = get_addr(buf)?;
    let bump = get_u32(buf)?;
    Ok(Identity {
        id: NodeId(id),
        addr,
        bump,
    })
}

pub(crate) fn put_coord(buf: &mut impl BufMut, c: &Coordinate) {
    for x in c.vec {
        buf.put_f64(x);
    }
    buf.put_f64(c.error);
    buf.put_f64(c.adjustment);
    buf.put_f64(c.height);
}

pub(crate) fn get_coord(buf: &mut impl Buf) -> Result<Coordinate, DecodeError> {
    let mut c = Coordinate::default();
    for x in &mut c.vec {
        *x = get_f64(buf)?;
    }
    c.error = get_f64(buf)?;
    c.adjustment = get_f64(buf)?;
    c.height = get_f64(buf)?;
    if !c.is_valid() {
        return Err(DecodeError::Invalid("coordinate"));
    }
    Ok(c)
}

/// Encoded size of a coordinate.
pub(crate) const COORD_LEN: usize = 8 * (DIMENSIONS + 3);

/// foca's wire codec for our [`Identity`].
#[derive(Debug, Default, Clone, Copy)]
pub struct WireCodec;

/// Errors of [`WireCodec`].
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Decoding failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Not enough room in the output buffer.
    #[error("buffer full")]
    BufferFull,
}

const MAX_IDENTITY_LEN: usize = 32 + 1 + 16 + 2 + 4;

fn room(buf: &impl BufMut, n: usize) -> Result<(), CodecError> {
    if buf.remaining_mut() < n {
        Err(CodecError::BufferFull)
    } else {
        Ok(())
    }
}

impl foca::Codec<Identity> for WireCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<Identity>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        room(&buf, 3 * MAX_IDENTITY_LEN + 4)?;
        put_identity(&mut buf, &header.src);
        buf.put_u16(header.src_incarnation);
        put_identity(&mut buf, &header.dst);
        match &header.message {
            Message::Ping(n) => buf.put_slice(&[0, *n]),
            Message::Ack(n) => buf.put_slice(&[1, *n]),
            Message::PingReq {
                target,
                probe_number,
            } => {
                buf.put_slice(&[2, *probe_number]);
                put_identity(&mut buf, target);
            }
            Message::IndirectPing {
                origin,
                probe_number,
            } => {
                buf.put_slice(&[3, *probe_number]);
                put_identity(&mut buf, origin);
            }
            Message::IndirectAck {
                target,
                probe_number,
            } => {
                buf.put_slice(&[4, *probe_number]);
                put_identity(&mut buf, target);
            }
            Message::ForwardedAck {
                origin,
                probe_number,
            } => {
                buf.put_slice(&[5, *probe_number]);
                put_identity(&mut buf, origin);
            }
            Message::Announce => buf.put_u8(6),
            Message::Feed => buf.put_u8(7),
            Message::Gossip => buf.put_u8(8),
            Message::Broadcast => buf.put_u8(9),
            Message::TurnUndead => buf.put_u8(10),
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<Identity>, Self::Error> {
        let src = get_identity(&mut buf)?;
        let src_incarnation = get_u16(&mut buf)?;
        let dst = get_identity(&mut buf)?;
        let tag = get_u8(&mut buf)?;
        let message = match tag {
            0..=5 => {
                let n = get_u8(&mut buf)?;
                match tag {
                    0 => Message::Ping(n),
                    1 => Message::Ack(n),
                    2 => Message::PingReq {
                        target: get_identity(&mut buf)?,
                        probe_number: n,
                    },
                    3 => Message::IndirectPing {
                        origin: get_identity(&mut buf)?,
                        probe_number: n,
                    },
                    4 => Message::IndirectAck {
                        target: get_identity(&mut buf)?,
                        probe_number: n,
                    },
                    _ => Message::ForwardedAck {
                        origin: get_identity(&mut buf)?,
                        probe_number: n,
                    },
                }
            }
            6 => Message::Announce,
            7 => Message::Feed,
            8 => Message::Gossip,
            9 => Message::Broadcast,
            10 => Message::TurnUndead,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "message",
                    tag,
                }
                .into());
            }
        };
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<Identity>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        // Must not leave the buffer dirty: check room for the exact size first.
        let len = identity_len(member.id()) + 3;
        room(&buf, len)?;
        put_identity(&mut buf, member.id());
        buf.put_u16(member.incarnation());
        buf.put_u8(match member.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<Identity>, Self::Error> {
        let id = get_identity(&mut buf)?;
        let incarnation = get_u16(&mut buf)?;
        let state = match get_u8(&mut buf)? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "member state",
                    tag,
                }
                .into());
            }
        };
        Ok(Member::new(id, incarnation, state))
    }
}

pub(crate) fn identity_len(id: &Identity) -> usize {
    32 + 1 + if id.addr.is_ipv4() { 4 } else { 16 } + 2 + 4
}
