//! The STUN message codec the TURN server needs (RFC 8489 §5–§14): header,
//! attributes, XOR addresses, MESSAGE-INTEGRITY (HMAC-SHA1) and
//! FINGERPRINT (CRC-32), and TURN's ChannelData framing (RFC 8656 §12.4).
//!
//! Owns bytes only: no sockets, no state. Every input is hostile: lengths
//! are checked against the buffer before anything is read, and a message
//! that does not parse is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// The magic cookie of every STUN message.
pub const MAGIC: u32 = 0x2112_A442;
const FINGERPRINT_XOR: u32 = 0x5354_554E;
const HEADER: usize = 20;

/// STUN and TURN methods.
pub mod method {
    /// Binding (STUN).
    pub const BINDING: u16 = 0x001;
    /// Allocate (TURN).
    pub const ALLOCATE: u16 = 0x003;
    /// Refresh (TURN).
    pub const REFRESH: u16 = 0x004;
    /// Send indication (TURN).
    pub const SEND: u16 = 0x006;
    /// Data indication (TURN).
    pub const DATA: u16 = 0x007;
    /// CreatePermission (TURN).
    pub const CREATE_PERMISSION: u16 = 0x008;
    /// ChannelBind (TURN).
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types used here.
pub mod attr {
    /// MAPPED-ADDRESS.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// CHANNEL-NUMBER.
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME.
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA.
    pub const DATA: u16 = 0x0013;
    /// REALM.
    pub const REALM: u16 = 0x0014;
    /// NONCE.
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-TRANSPORT.
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
}

/// The class of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A request.
    Request,
    /// An indication.
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

/// Why bytes are not a STUN message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than the header or than its length field says.
    #[error("truncated STUN message")]
    Truncated,
    /// The two top bits are not zero, the cookie is wrong, or the length is
    /// not a multiple of 4.
    #[error("not a STUN message")]
    NotStun,
    /// An attribute runs past the end of the message.
    #[error("malformed attribute")]
    BadAttribute,
}

/// One parsed message. Attributes keep their offsets in `raw` so that
/// MESSAGE-INTEGRITY and FINGERPRINT can be checked.
#[derive(Clone, Debug)]
pub struct Message {
    /// The method (12 bits).
    pub method: u16,
    /// The class.
    pub class: Class,
    /// The transaction id.
    pub txid: [u8; 12],
    /// `(type, value, offset of the attribute header in raw)`.
    attrs: Vec<(u16, std::ops::Range<usize>, usize)>,
    raw: Vec<u8>,
}

/// Whether `b` starts like a STUN message (top two bits zero) rather than
/// ChannelData (first byte 0x40–0x7F).
pub fn looks_like_stun(b: &[u8]) -> bool {
    b.first().is_some_and(|x| x & 0xC0 == 0)
}

impl Message {
    /// Parses one message (the whole datagram).
    pub fn parse(b: &[u8]) -> Result<Self, StunError> {
        if b.len() < HEADER {
            return Err(StunError::Truncated);
        }
        let ty = u16::from_be_bytes([b[0], b[1]]);
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let cookie = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        if ty & 0xC000 != 0 || cookie != MAGIC || len % 4 != 0 {
            return Err(StunError::NotStun);
        }
        if b.len() < HEADER + len {
            return Err(StunError::Truncated);
        }
        let raw = b[..HEADER + len].to_vec();
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&raw[8..20]);
        let method = (ty & 0x000F) | ((ty & 0x00E0) >> 1) | ((ty & 0x3E00) >> 2);
        let class = match ((ty >> 4) & 1) | ((ty >> 7) & 2) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        let mut attrs = Vec::new();
        let mut at = HEADER;
        // Bounded by the message length: each attribute takes >= 4 bytes.
        while at < raw.len() {
            if at + 4 > raw.len() {
                return Err(StunError::BadAttribute);
            }
            let t = u16::from_be_bytes([raw[at], raw[at + 1]]);
            let l = usize::from(u16::from_be_bytes([raw[at + 2], raw[at + 3]]));
            let start = at + 4;
            if start + l > raw.len() {
                return Err(StunError::BadAttribute);
            }
            attrs.push((t, start..start + l, at));
            at = start + l.div_ceil(4) * 4;
        }
        Ok(Self {
            method,
            class,
            txid,
            attrs,
            raw,
        })
    }

    /// The first value of attribute `t`.
    pub fn get(&self, t: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(ty, _, _)| *ty == t)
            .map(|(_, r, _)| &self.raw[r.clone()])
    }

    /// A text attribute (USERNAME, REALM, NONCE), if valid UTF-8.
    pub fn text(&self, t: u16) -> Option<&str> {
        self.get(t).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// An XOR address attribute.
    pub fn xor_addr(&self, t: u16) -> Option<SocketAddr> {
        decode_xor(self.get(t)?, &self.txid)
    }

    /// Every XOR address attribute of type `t`, in order.
    pub fn xor_addrs(&self, t: u16) -> Vec<SocketAddr> {
        self.attrs
            .iter()
            .filter(|(ty, _, _)| *ty == t)
            .filter_map(|(_, r, _)| decode_xor(&self.raw[r.clone()], &self.txid))
            .collect()
    }

    /// Checks MESSAGE-INTEGRITY with `key` (RFC 8489 §14.5): the HMAC over
    /// the message up to the attribute, with the length field covering it.
    pub fn check_integrity(&self, key: &[u8]) -> bool {
        let Some((_, value, header)) = self
            .attrs
            .iter()
            .find(|(t, _, _)| *t == attr::MESSAGE_INTEGRITY)
        else {
            return false;
        };
        if value.len() != 20 {
            return false;
        }
        let mut covered = self.raw[..*header].to_vec();
        let len = (*header + 24 - HEADER) as u16;
        covered[2..4].copy_from_slice(&len.to_be_bytes());
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
            return false;
        };
        mac.update(&covered);
        mac.verify_slice(&self.raw[value.clone()]).is_ok()
    }
}

/// The long-term credential key: MD5(username ":" realm ":" password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(format!("{username}:{realm}:{password}").as_bytes());
    h.finalize().into()
}

fn decode_xor(v: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
    let magic = MAGIC.to_be_bytes();
    match (v[1], v.len()) {
        (0x01, 8) => {
            let mut a = [0u8; 4];
            for i in 0..4 {
                a[i] = v[4 + i] ^ magic[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))
        }
        (0x02, 20) => {
            let mut a = [0u8; 16];
            for i in 0..16 {
                let k = if i < 4 { magic[i] } else { txid[i - 4] };
                a[i] = v[4 + i] ^ k;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        _ => None,
    }
}

fn encode_xor(a: SocketAddr, txid: &[u8; 12]) -> Vec<u8> {
    let magic = MAGIC.to_be_bytes();
    let port = a.port() ^ (MAGIC >> 16) as u16;
    let mut v = vec![0u8];
    match a.ip() {
        IpAddr::V4(ip) => {
            v.push(0x01);
            v.extend_from_slice(&port.to_be_bytes());
            for (i, b) in ip.octets().iter().enumerate() {
                v.push(b ^ magic[i]);
            }
        }
        IpAddr::V6(ip) => {
            v.push(0x02);
            v.extend_from_slice(&port.to_be_bytes());
            for (i, b) in ip.octets().iter().enumerate() {
                let k = if i < 4 { magic[i] } else { txid[i - 4] };
                v.push(b ^ k);
            }
        }
    }
    v
}

/// Builds one message.
#[derive(Clone, Debug)]
pub struct Builder {
    buf: Vec<u8>,
    txid: [u8; 12],
}

impl Builder {
    /// A message of `method` and `class` with transaction id `txid`.
    pub fn new(method: u16, class: Class, txid: [u8; 12]) -> Self {
        let c = match class {
            Class::Request => 0u16,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        };
        let ty = (method & 0x000F)
            | ((method & 0x0070) << 1)
            | ((method & 0x0F80) << 2)
            | ((c & 1) << 4)
            | ((c & 2) << 7);
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&ty.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(&txid);
        Self { buf, txid }
    }

    /// Adds attribute `t` with `value` (padded to 4 bytes).
    pub fn add(mut self, t: u16, value: &[u8]) -> Self {
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = value.len().div_ceil(4) * 4 - value.len();
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self.set_len();
        self
    }

    /// Adds an XOR address attribute.
    pub fn xor_addr(self, t: u16, a: SocketAddr) -> Self {
        let v = encode_xor(a, &self.txid);
        self.add(t, &v)
    }

    /// Adds ERROR-CODE `code` with `reason`.
    pub fn error(self, code: u16, reason: &str) -> Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.add(attr::ERROR_CODE, &v)
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - HEADER) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Adds MESSAGE-INTEGRITY keyed with `key`.
    pub fn integrity(mut self, key: &[u8]) -> Self {
        let len = (self.buf.len() + 24 - HEADER) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.add(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// Adds FINGERPRINT and returns the encoded message.
    pub fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len() + 8 - HEADER) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&self.buf) ^ FINGERPRINT_XOR;
        self.add(attr::FINGERPRINT, &crc.to_be_bytes()).buf
    }
}

/// A TURN ChannelData message: `(channel, data)`, if `b` is one.
pub fn parse_channel_data(b: &[u8]) -> Option<(u16, &[u8])> {
    if b.len() < 4 {
        return None;
    }
    let ch = u16::from_be_bytes([b[0], b[1]]);
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if !(0x4000..=0x4FFF).contains(&ch) || b.len() < 4 + len {
        return None;
    }
    Some((ch, &b[4..4 + len]))
}

/// Encodes a ChannelData message (padded to 4 bytes, as over UDP).
pub fn channel_data(ch: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + data.len() + 3);
    v.extend_from_slice(&ch.to_be_bytes());
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v.resize(4 + data.len().div_ceil(4) * 4, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5769_sample_request_checks_with_its_password() {
        // RFC 5769 §2.1: a request with short-term credentials.
        let hex = "000100582112a442b7e7a701bc34d686fa87dfae\
                   802200105354554e20746573742063 6c69656e74\
                   00240004 6e0001ff 80290008 932ff9b151263b36\
                   000600096576746a3a68367659202020\
                   000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2\
                   80280004e57a3bcf";
        let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
        let b: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.method, method::BINDING);
        assert_eq!(m.class, Class::Request);
        assert_eq!(m.text(attr::USERNAME), Some("evtj:h6vY"));
        assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.check_integrity(b"wrong"));
        // FINGERPRINT as Builder::finish computes it.
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&b[..b.len() - 8])
            ^ FINGERPRINT_XOR;
        assert_eq!(m.get(attr::FINGERPRINT), Some(&crc.to_be_bytes()[..]));
    }

    #[test]
    fn built_messages_parse_back_with_integrity_and_xor_addresses() {
        let txid = [7u8; 12];
        let a4: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let a6: SocketAddr = "[::1]:40001".parse().unwrap();
        let key = long_term_key("u", "r", "p");
        let b = Builder::new(method::ALLOCATE, Class::Success, txid)
            .xor_addr(attr::XOR_RELAYED_ADDRESS, a4)
            .xor_addr(attr::XOR_MAPPED_ADDRESS, a6)
            .add(attr::LIFETIME, &600u32.to_be_bytes())
            .integrity(&key)
            .finish();
        let m = Message::parse(&b).unwrap();
        assert_eq!((m.method, m.class), (method::ALLOCATE, Class::Success));
        assert_eq!(m.xor_addr(attr::XOR_RELAYED_ADDRESS), Some(a4));
        assert_eq!(m.xor_addr(attr::XOR_MAPPED_ADDRESS), Some(a6));
        assert!(m.check_integrity(&key));
        assert!(!m.check_integrity(&long_term_key("u", "r", "q")));
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        assert_eq!(Message::parse(&[0; 3]).unwrap_err(), StunError::Truncated);
        let mut b = Builder::new(method::BINDING, Class::Request, [1; 12])
            .add(attr::USERNAME, b"abc")
            .finish();
        // An attribute length past the end.
        b[22] = 0xFF;
        assert_eq!(Message::parse(&b).unwrap_err(), StunError::BadAttribute);
        // A header length past the datagram.
        let mut c = b.clone();
        c[3] = 0xFC;
        assert_eq!(Message::parse(&c).unwrap_err(), StunError::Truncated);
        assert_eq!(Message::parse(&[0x40; 24]).unwrap_err(), StunError::NotStun);
        assert_eq!(parse_channel_data(&[0x40, 0, 0, 9, 1]), None);
        assert_eq!(
            parse_channel_data(&channel_data(0x4001, b"hi")),
            Some((0x4001, &b"hi"[..]))
        );
    }
}
