//! Handshake messages of DTLS 1.2 (RFC 6347 section 4.2, RFC 5246 section 7.4, RFC 4492,
//! RFC 7250) and alerts, as Particle's profile uses them (reference 1.3).
//!
//! Handshake header (12 bytes, RFC 6347 4.2.2):
//! ```text
//! offset  size  field
//! 0       1     msg_type
//! 1       3     length            (of the whole message body)
//! 4       2     message_seq
//! 6       3     fragment_offset
//! 9       3     fragment_length
//! 12      n     fragment
//! ```
//! Each message body has a `Repr` with `parse` (from the reassembled body) and `emit`.

use super::DtlsError;

/// Byte ranges of the handshake header.
pub mod field {
    use core::ops::Range;
    pub const MSG_TYPE: usize = 0;
    pub const LENGTH: Range<usize> = 1..4;
    pub const MESSAGE_SEQ: Range<usize> = 4..6;
    pub const FRAGMENT_OFFSET: Range<usize> = 6..9;
    pub const FRAGMENT_LENGTH: Range<usize> = 9..12;
    pub const HEADER_LEN: usize = 12;
}

/// Handshake message types.
pub mod msg_type {
    pub const HELLO_REQUEST: u8 = 0;
    pub const CLIENT_HELLO: u8 = 1;
    pub const SERVER_HELLO: u8 = 2;
    pub const HELLO_VERIFY_REQUEST: u8 = 3;
    pub const CERTIFICATE: u8 = 11;
    pub const SERVER_KEY_EXCHANGE: u8 = 12;
    pub const CERTIFICATE_REQUEST: u8 = 13;
    pub const SERVER_HELLO_DONE: u8 = 14;
    pub const CERTIFICATE_VERIFY: u8 = 15;
    pub const CLIENT_KEY_EXCHANGE: u8 = 16;
    pub const FINISHED: u8 = 20;
}

/// Extension code points used by the profile.
pub mod ext {
    pub const SUPPORTED_GROUPS: u16 = 10;
    pub const EC_POINT_FORMATS: u16 = 11;
    pub const SIGNATURE_ALGORITHMS: u16 = 13;
    pub const CLIENT_CERTIFICATE_TYPE: u16 = 19;
    pub const SERVER_CERTIFICATE_TYPE: u16 = 20;
    /// draft-ietf-tls-dtls-connection-id-05 as mbedTLS 2.x numbers it.
    pub const CONNECTION_ID: u16 = 254;
    pub const RENEGOTIATION_INFO: u16 = 0xff01;
}

/// TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8.
pub const TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8: u16 = 0xc0ae;
/// TLS_EMPTY_RENEGOTIATION_INFO_SCSV.
pub const TLS_EMPTY_RENEGOTIATION_INFO_SCSV: u16 = 0x00ff;
/// secp256r1 named curve.
pub const SECP256R1: u16 = 0x0017;
/// SignatureAndHashAlgorithm ecdsa_secp256r1_sha256 (hash 4 = SHA-256, signature 3 = ECDSA).
pub const ECDSA_SHA256: u16 = 0x0403;
/// SignatureAndHashAlgorithm ECDSA with SHA-384 (hash 5), which the Particle cloud's
/// CertificateRequest offers second after RSA; RFC 7250 clients such as GnuTLS pick it.
pub const ECDSA_SHA384: u16 = 0x0503;
/// Certificate type RawPublicKey (RFC 7250).
pub const CERT_TYPE_RAW_PUBLIC_KEY: u8 = 2;
/// Certificate type X.509 (RFC 7250).
pub const CERT_TYPE_X509: u8 = 0;

/// A bounds-checked reader that reports offsets relative to the message body.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, at: 0, what }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DtlsError> {
        if self.bytes.len() - self.at < n {
            return Err(DtlsError::Truncated {
                what: self.what,
                offset: self.bytes.len(),
            });
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DtlsError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DtlsError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u24(&mut self) -> Result<usize, DtlsError> {
        let b = self.take(3)?;
        Ok(((b[0] as usize) << 16) | ((b[1] as usize) << 8) | b[2] as usize)
    }
    pub(crate) fn vec8(&mut self) -> Result<&'a [u8], DtlsError> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    pub(crate) fn vec16(&mut self) -> Result<&'a [u8], DtlsError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    pub(crate) fn vec24(&mut self) -> Result<&'a [u8], DtlsError> {
        let n = self.u24()?;
        self.take(n)
    }
    pub(crate) fn array32(&mut self) -> Result<[u8; 32], DtlsError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32)?);
        Ok(out)
    }
    pub(crate) fn offset(&self) -> usize {
        self.at
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }
    pub(crate) fn finish(&self) -> Result<(), DtlsError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DtlsError::Malformed {
                what: self.what,
                offset: self.at,
            })
        }
    }
}

fn put_u24(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes()[1..]);
}
fn put_vec8(out: &mut Vec<u8>, v: &[u8]) {
    out.push(v.len() as u8);
    out.extend_from_slice(v);
}
fn put_vec16(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
}
fn put_vec24(out: &mut Vec<u8>, v: &[u8]) {
    put_u24(out, v.len());
    out.extend_from_slice(v);
}

/// A checked view of one handshake fragment at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Handshake<T> {
    pub fn new_checked(buffer: T) -> Result<Self, DtlsError> {
        let h = Self { buffer };
        let b = h.buffer.as_ref();
        if b.len() < field::HEADER_LEN {
            return Err(DtlsError::Truncated {
                what: "handshake header",
                offset: b.len(),
            });
        }
        if h.fragment_offset() + h.fragment_length() > h.length() {
            return Err(DtlsError::Malformed {
                what: "handshake fragment range",
                offset: field::FRAGMENT_OFFSET.start,
            });
        }
        if b.len() < field::HEADER_LEN + h.fragment_length() {
            return Err(DtlsError::Truncated {
                what: "handshake fragment",
                offset: b.len(),
            });
        }
        Ok(h)
    }
    fn u24(&self, r: core::ops::Range<usize>) -> usize {
        self.buffer.as_ref()[r]
            .iter()
            .fold(0, |a, &x| (a << 8) | x as usize)
    }
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::MSG_TYPE]
    }
    pub fn length(&self) -> usize {
        self.u24(field::LENGTH)
    }
    pub fn message_seq(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::MESSAGE_SEQ];
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn fragment_offset(&self) -> usize {
        self.u24(field::FRAGMENT_OFFSET)
    }
    pub fn fragment_length(&self) -> usize {
        self.u24(field::FRAGMENT_LENGTH)
    }
    pub fn fragment(&self) -> &[u8] {
        &self.buffer.as_ref()[field::HEADER_LEN..field::HEADER_LEN + self.fragment_length()]
    }
}

/// One handshake fragment (a whole message when offset 0 and length = total length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentRepr<'a> {
    pub msg_type: u8,
    pub length: usize,
    pub message_seq: u16,
    pub fragment_offset: usize,
    pub fragment: &'a [u8],
}

impl<'a> FragmentRepr<'a> {
    /// Parses the fragment at the start of `bytes`; returns it and the bytes it takes.
    pub fn parse(bytes: &'a [u8]) -> Result<(Self, usize), DtlsError> {
        let h = Handshake::new_checked(bytes)?;
        let n = h.fragment_length();
        Ok((
            Self {
                msg_type: h.msg_type(),
                length: h.length(),
                message_seq: h.message_seq(),
                fragment_offset: h.fragment_offset(),
                fragment: &bytes[field::HEADER_LEN..field::HEADER_LEN + n],
            },
            field::HEADER_LEN + n,
        ))
    }

    /// Parses every fragment of a handshake record.
    pub fn parse_all(mut bytes: &'a [u8]) -> Result<Vec<Self>, DtlsError> {
        let mut out = Vec::new();
        let mut at = 0;
        while !bytes.is_empty() {
            let (f, used) = Self::parse(bytes).map_err(|e| e.shifted(at))?;
            out.push(f);
            bytes = &bytes[used..];
            at += used;
        }
        Ok(out)
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.msg_type);
        put_u24(out, self.length);
        out.extend_from_slice(&self.message_seq.to_be_bytes());
        put_u24(out, self.fragment_offset);
        put_u24(out, self.fragment.len());
        out.extend_from_slice(self.fragment);
    }
}

/// A whole handshake message with the DTLS header as it enters the transcript
/// (fragment_offset 0, fragment_length = length).
pub fn whole_message(msg_type: u8, message_seq: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field::HEADER_LEN + body.len());
    FragmentRepr {
        msg_type,
        length: body.len(),
        message_seq,
        fragment_offset: 0,
        fragment: body,
    }
    .emit(&mut out);
    out
}

/// A hello extension: type and opaque body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub typ: u16,
    pub data: Vec<u8>,
}

fn parse_extensions(r: &mut Reader<'_>) -> Result<Vec<Extension>, DtlsError> {
    if r.is_empty() {
        return Ok(Vec::new());
    }
    let base = r.offset() + 2;
    let block = r.vec16()?;
    let mut er = Reader::new(block, "hello extensions");
    let mut out = Vec::new();
    while !er.is_empty() {
        let typ = er.u16().map_err(|e| e.shifted(base))?;
        let data = er.vec16().map_err(|e| e.shifted(base))?.to_vec();
        out.push(Extension { typ, data });
    }
    Ok(out)
}

fn emit_extensions(out: &mut Vec<u8>, exts: &[Extension]) {
    if exts.is_empty() {
        return;
    }
    let mut block = Vec::new();
    for e in exts {
        block.extend_from_slice(&e.typ.to_be_bytes());
        put_vec16(&mut block, &e.data);
    }
    put_vec16(out, &block);
}

/// Finds an extension by type.
pub fn find_extension(exts: &[Extension], typ: u16) -> Option<&[u8]> {
    exts.iter()
        .find(|e| e.typ == typ)
        .map(|e| e.data.as_slice())
}

/// ClientHello (RFC 6347 4.2.1: with a cookie).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    pub client_version: u16,
    pub random: [u8; 32],
    pub session_id: Vec<u8>,
    pub cookie: Vec<u8>,
    pub cipher_suites: Vec<u16>,
    pub compression_methods: Vec<u8>,
    pub extensions: Vec<Extension>,
}

impl ClientHello {
    pub fn parse(body: &[u8]) -> Result<Self, DtlsError> {
        let mut r = Reader::new(body, "ClientHello");
        let client_version = r.u16()?;
        let random = r.array32()?;
        let session_id = r.vec8()?.to_vec();
        let cookie = r.vec8()?.to_vec();
        let suites_at = r.offset();
        let suites = r.vec16()?;
        if suites.len() % 2 != 0 {
            return Err(DtlsError::Malformed {
                what: "ClientHello cipher suites",
                offset: suites_at,
            });
        }
        let cipher_suites = suites
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        let compression_methods = r.vec8()?.to_vec();
        let extensions = parse_extensions(&mut r)?;
        r.finish()?;
        Ok(Self {
            client_version,
            random,
            session_id,
            cookie,
            cipher_suites,
            compression_methods,
            extensions,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.client_version.to_be_bytes());
        out.extend_from_slice(&self.random);
        put_vec8(out, &self.session_id);
        put_vec8(out, &self.cookie);
        let suites: Vec<u8> = self
            .cipher_suites
            .iter()
            .flat_map(|s| s.to_be_bytes())
            .collect();
        put_vec16(out, &suites);
        put_vec8(out, &self.compression_methods);
        emit_extensions(out, &self.extensions);
    }
}

/// HelloVerifyRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloVerifyRequest {
    pub server_version: u16,
    pub cookie: Vec<u8>,
}

impl HelloVerifyRequest {
    pub fn parse(body: &[u8]) -> Result<Self, DtlsError> {
        let mut r = Reader::new(body, "HelloVerifyRequest");
        let server_version = r.u16()?;
        let cookie = r.vec8()?.to_vec();
        r.finish()?;
        Ok(Self {
            server_version,
            cookie,
        })
    }
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.server_version.to_be_bytes());
        put_vec8(out, &self.cookie);
    }
}

/// ServerHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    pub server_version: u16,
    pub random: [u8; 32],
    pub session_id: Vec<u8>,
    pub cipher_suite: u16,
    pub compression_method: u8,
    pub extensions: Vec<Extension>,
}

impl ServerHello {
    pub fn parse(body: &[u8]) -> Result<Self, DtlsError> {
        let mut r = Reader::new(body, "ServerHello");
        let server_version = r.u16()?;
        let random = r.array32()?;
        let session_id = r.vec8()?.to_vec();
        let cipher_suite = r.u16()?;
        let compression_method = r.u8()?;
        let extensions = parse_extensions(&mut r)?;
        r.finish()?;
        Ok(Self {
            server_version,
            random,
            session_id,
            cipher_suite,
            compression_method,
            extensions,
        })
    }
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.server_version.to_be_bytes());
        out.extend_from_slice(&self.random);
        put_vec8(out, &self.session_id);
        out.extend_from_slice(&self.cipher_suite.to_be_bytes());
        out.push(self.compression_method);
        emit_extensions(out, &self.extensions);
    }
}

/// ServerKeyExchange for ECDHE_ECDSA (RFC 4492 5.4): named curve, point, signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKeyExchange {
    pub named_curve: u16,
    /// Uncompressed SEC1 point (65 bytes for P-256).
    pub public: Vec<u8>,
    pub signature_scheme: u16,
    /// DER-encoded ECDSA signature.
    pub signature: Vec<u8>,
}

impl ServerKeyExchange {
    pub fn parse(body: &[u8]) -> Result<Self, DtlsError> {
        let mut r = Reader::new(body, "ServerKeyExchange");
        let curve_type = r.u8()?;
        if curve_type != 3 {
            return Err(DtlsError::Malformed {
                what: "ServerKeyExchange curve type (named_curve = 3)",
                offset: 0,
            });
        }
        let named_curve = r.u16()?;
        let public = r.vec8()?.to_vec();
        let signature_scheme = r.u16()?;
        let signature = r.vec16()?.to_vec();
        r.finish()?;
        Ok(Self {
            named_curve,
            public,
            signature_scheme,
            signature,
        })
    }
    /// The ServerECDHParams bytes that the signature covers (after the two randoms).
    pub fn params(&self) -> Vec<u8> {
        let mut out = vec![3];
        out.extend_from_slice(&self.named_curve.to_be_bytes());
        put_vec8(&mut out, &self.public);
        out
    }
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.params());
        out.extend_from_slice(&self.signature_scheme.to_be_bytes());
        put_vec16(out, &self.signature);
    }
}

/// CertificateRequest (RFC 5246 7.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    pub certificate_types: Vec<u8>,
    pub signature_algorithms: Vec<u16>,
    /// Raw DistinguishedName list (empty in the profile).
    pub authorities: Vec<u8>,
}

impl CertificateRequest {
    pub fn parse(body: &[u8]) -> Result<Self, DtlsError> {
        let mut r = Reader::new(body, "CertificateRequest");
        let certificate_types = r.vec8()?.to_vec();
        let at = r.offset();
        let algs = r.vec16()?;
        if algs.len() % 2 != 0 {
            return Err(DtlsError::Malformed {
                what: "CertificateRequest signature algorithms",
                offset: at,
            });
        }
        let signature_algorithms = algs
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        let authorities = r.vec16()?.to_vec();
        r.finish()?;
        Ok(Self {
            certificate_types,
            signature_algorithms,
            authorities,
        })
    }
    pub fn emit(&self, out: &mut Vec<u8>) {
        put_vec8(out, &self.certificate_types);
        let algs: Vec<u8> = self
            .signature_algorithms
            .iter()
            .flat_map(|s| s.to_be_bytes())
            .collect();
        put_vec16(out, &algs);
        put_vec16(out, &self.authorities);
    }
}

/// Certificate: a raw public key (RFC 7250: one 24-bit length + SubjectPublicKeyInfo) or an
/// X.509 chain (RFC 5246: 24-bit list length + 24-bit length per certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certificate {
    RawPublicKey(Vec<u8>),
    X509(Vec<Vec<u8>>),
}

impl Certificate {
    /// Parses with the negotiated certificate type.
    pub fn parse(body: &[u8], raw_public_key: bool) -> Result<Self, DtlsError> {
        let mut r = Reader::new(body, "Certificate");
        if raw_public_key {
            let spki = r.vec24()?.to_vec();
            r.finish()?;
            return Ok(Self::RawPublicKey(spki));
        }
        let list = r.vec24()?;
        r.finish()?;
        let mut lr = Reader::new(list, "Certificate list");
        let mut certs = Vec::new();
        while !lr.is_empty() {
            certs.push(lr.vec24().map_err(|e| e.shifted(3))?.to_vec());
        }
        Ok(Self::X509(certs))
    }
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Self::RawPublicKey(spki) => put_vec24(out, spki),
            Self::X509(certs) => {
                let mut list = Vec::new();
                for c in certs {
                    put_vec24(&mut list, c);
                }
                put_vec24(out, &list);
            }
        }
    }
}

/// ClientKeyExchange for ECDHE: the client's uncompressed point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKeyExchange {
    pub public: Vec<u8>,
}

impl ClientKeyExchange {
    pub fn parse(body: &[u8]) -> Result<Self, DtlsError> {
        let mut r = Reader::new(body, "ClientKeyExchange");
        let public = r.vec8()?.to_vec();
        r.finish()?;
        Ok(Self { public })
    }
    pub fn emit(&self, out: &mut Vec<u8>) {
        put_vec8(out, &self.public);
    }
}

/// CertificateVerify (TLS 1.2: scheme + DER signature over the transcript).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateVerify {
    pub signature_scheme: u16,
    pub signature: Vec<u8>,
}

impl CertificateVerify {
    pub fn parse(body: &[u8]) -> Result<Self, DtlsError> {
        let mut r = Reader::new(body, "CertificateVerify");
        let signature_scheme = r.u16()?;
        let signature = r.vec16()?.to_vec();
        r.finish()?;
        Ok(Self {
            signature_scheme,
            signature,
        })
    }
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.signature_scheme.to_be_bytes());
        put_vec16(out, &self.signature);
    }
}

/// Finished: 12 bytes of verify_data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub verify_data: [u8; 12],
}

impl Finished {
    pub fn parse(body: &[u8]) -> Result<Self, DtlsError> {
        let mut r = Reader::new(body, "Finished");
        let mut verify_data = [0u8; 12];
        verify_data.copy_from_slice(r.take(12)?);
        r.finish()?;
        Ok(Self { verify_data })
    }
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.verify_data);
    }
}

/// Alert levels.
pub const ALERT_WARNING: u8 = 1;
pub const ALERT_FATAL: u8 = 2;

/// Alert descriptions used here.
pub mod alert {
    pub const CLOSE_NOTIFY: u8 = 0;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const HANDSHAKE_FAILURE: u8 = 40;
    pub const BAD_CERTIFICATE: u8 = 42;
    pub const UNSUPPORTED_CERTIFICATE: u8 = 43;
    pub const ILLEGAL_PARAMETER: u8 = 47;
    pub const DECODE_ERROR: u8 = 50;
    pub const DECRYPT_ERROR: u8 = 51;
    pub const PROTOCOL_VERSION: u8 = 70;
    pub const INTERNAL_ERROR: u8 = 80;
}

/// An alert record's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    pub level: u8,
    pub description: u8,
}

impl Alert {
    pub fn parse(body: &[u8]) -> Result<Self, DtlsError> {
        let mut r = Reader::new(body, "Alert");
        let level = r.u8()?;
        let description = r.u8()?;
        r.finish()?;
        Ok(Self { level, description })
    }
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.level);
        out.push(self.description);
    }
}
