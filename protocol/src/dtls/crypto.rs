//! Key schedule and record protection for TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 (reference 1.3):
//! the TLS 1.2 PRF with HMAC-SHA256 (RFC 5246 section 5), the 40-byte key block (no MAC keys),
//! AES-128-CCM with an 8-byte tag (RFC 6655), and the two AAD layouts: RFC 6347 for ordinary
//! records and draft-ietf-tls-dtls-connection-id-05 for CID records (as in the README of the
//! wire vectors: `seq ‖ 25 ‖ version ‖ cid ‖ cid_len ‖ inner_len`).

use core::ops::Range;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::ccm::Ccm8;
use super::record::{emit_header, ContentType, DTLS_1_2};
use super::DtlsError;

type HmacSha256 = Hmac<Sha256>;

/// Explicit nonce length in a protected record.
pub const EXPLICIT_NONCE_LEN: usize = 8;
/// CCM_8 tag length.
pub const TAG_LEN: usize = 8;
/// Bytes a protected record adds to its plaintext (explicit nonce + tag).
pub const PROTECTION_OVERHEAD: usize = EXPLICIT_NONCE_LEN + TAG_LEN;
/// DTLSInnerPlaintext padding granularity used by Device OS (mbedTLS CID padding, 16).
pub const CID_PADDING_GRANULARITY: usize = 16;

/// TLS 1.2 PRF (P_SHA256) filling `out`.
pub fn prf(secret: &[u8], label: &[u8], seed: &[u8], out: &mut [u8]) {
    let mac = |parts: &[&[u8]]| {
        // HMAC accepts keys of any length.
        let mut m = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes()
    };
    let mut a = mac(&[label, seed]);
    let mut filled = 0;
    while filled < out.len() {
        let block = mac(&[&a, label, seed]);
        let n = (out.len() - filled).min(block.len());
        out[filled..filled + n].copy_from_slice(&block[..n]);
        filled += n;
        a = mac(&[&a]);
    }
}

/// `master_secret = PRF(pre_master_secret, "master secret", client_random ‖ server_random)[0..48]`.
pub fn master_secret(
    pre_master: &[u8],
    client_random: &[u8; 32],
    server_random: &[u8; 32],
) -> [u8; 48] {
    let mut seed = [0u8; 64];
    seed[..32].copy_from_slice(client_random);
    seed[32..].copy_from_slice(server_random);
    let mut out = [0u8; 48];
    prf(pre_master, b"master secret", &seed, &mut out);
    out
}

/// Finished `verify_data = PRF(master_secret, label, SHA-256(handshake messages))[0..12]`.
pub fn verify_data(master: &[u8; 48], label: &[u8], transcript: &[u8]) -> [u8; 12] {
    let hash = Sha256::digest(transcript);
    let mut out = [0u8; 12];
    prf(master, label, &hash, &mut out);
    out
}

/// The 40-byte key block of CCM_8: keys and 4-byte implicit IVs for both directions.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBlock {
    pub client_write_key: [u8; 16],
    pub server_write_key: [u8; 16],
    pub client_write_iv: [u8; 4],
    pub server_write_iv: [u8; 4],
}

impl core::fmt::Debug for KeyBlock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("KeyBlock { .. }")
    }
}

impl KeyBlock {
    /// `PRF(master_secret, "key expansion", server_random ‖ client_random)[0..40]`.
    pub fn derive(master: &[u8; 48], client_random: &[u8; 32], server_random: &[u8; 32]) -> Self {
        let mut seed = [0u8; 64];
        seed[..32].copy_from_slice(server_random);
        seed[32..].copy_from_slice(client_random);
        let mut kb = [0u8; 40];
        prf(master, b"key expansion", &seed, &mut kb);
        let mut out = Self {
            client_write_key: [0; 16],
            server_write_key: [0; 16],
            client_write_iv: [0; 4],
            server_write_iv: [0; 4],
        };
        out.client_write_key.copy_from_slice(&kb[0..16]);
        out.server_write_key.copy_from_slice(&kb[16..32]);
        out.client_write_iv.copy_from_slice(&kb[32..36]);
        out.server_write_iv.copy_from_slice(&kb[36..40]);
        out
    }

    /// The (write, read) ciphers of one side.
    pub fn ciphers(&self, is_client: bool) -> (RecordCipher, RecordCipher) {
        let c = RecordCipher::new(&self.client_write_key, &self.client_write_iv);
        let s = RecordCipher::new(&self.server_write_key, &self.server_write_iv);
        if is_client {
            (c, s)
        } else {
            (s, c)
        }
    }
}

/// One direction's AES-128-CCM-8 state.
#[derive(Clone)]
pub struct RecordCipher {
    ccm: Ccm8,
    iv: [u8; 4],
}

impl core::fmt::Debug for RecordCipher {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RecordCipher { .. }")
    }
}

/// Builds the AAD of a record. `cid` selects the draft-05 layout.
pub fn aad(
    epoch: u16,
    seq: u64,
    content_type: u8,
    cid: Option<&[u8]>,
    plaintext_len: usize,
) -> Vec<u8> {
    AadBuf::new(epoch, seq, content_type, cid, plaintext_len)
        .as_ref()
        .to_vec()
}

/// Longest AAD: 11 bytes of epoch, sequence, type and version, a CID of up to 255 bytes and
/// its length byte, 2 bytes of length.
const MAX_AAD: usize = 11 + 255 + 1 + 2;

/// The AAD of one record on the stack (the record path builds one per record).
struct AadBuf {
    bytes: [u8; MAX_AAD],
    len: usize,
}

impl AadBuf {
    fn new(
        epoch: u16,
        seq: u64,
        content_type: u8,
        cid: Option<&[u8]>,
        plaintext_len: usize,
    ) -> Self {
        let mut a = Self {
            bytes: [0; MAX_AAD],
            len: 0,
        };
        a.put(&epoch.to_be_bytes());
        a.put(&seq.to_be_bytes()[2..]);
        match cid {
            None => {
                a.put(&[content_type]);
                a.put(&DTLS_1_2.to_be_bytes());
            }
            Some(cid) => {
                // draft-05: the outer type is always tls12_cid (25), also for the 253 alias:
                // Device OS (`DTLSMessageChannel::send`) overwrites only the first header byte
                // of a record mbedTLS already protected as type 25, so the AAD keeps 25.
                let cid = &cid[..cid.len().min(255)];
                a.put(&[ContentType::Cid.to_u8()]);
                a.put(&DTLS_1_2.to_be_bytes());
                a.put(cid);
                a.put(&[cid.len() as u8]);
            }
        }
        a.put(&(plaintext_len as u16).to_be_bytes());
        a
    }

    fn put(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

impl AsRef<[u8]> for AadBuf {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl RecordCipher {
    pub fn new(key: &[u8; 16], iv: &[u8; 4]) -> Self {
        Self {
            ccm: Ccm8::new(key),
            iv: *iv,
        }
    }

    fn nonce(&self, explicit: &[u8; 8]) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.iv);
        n[4..].copy_from_slice(explicit);
        n
    }

    /// Protects `content` of `content_type` and returns the complete record. With `cid` the
    /// record is a CID record (type `outer_type`, 25 or 253) holding the DTLSInnerPlaintext
    /// padded with zeros to a multiple of 16.
    pub fn seal(
        &self,
        content_type: ContentType,
        epoch: u16,
        seq: u64,
        cid: Option<(&[u8], ContentType)>,
        content: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::sealed_len(cid.map(|(c, _)| c), content.len()));
        self.seal_into(content_type, epoch, seq, cid, content, &mut out);
        out
    }

    /// Bytes of the record [`RecordCipher::seal`] makes of `content_len` bytes.
    pub fn sealed_len(cid: Option<&[u8]>, content_len: usize) -> usize {
        13 + cid.map_or(0, <[u8]>::len)
            + Self::body_len(cid.is_some(), content_len)
            + PROTECTION_OVERHEAD
    }

    /// The plaintext body of a record of `content_len` bytes: for a CID record the
    /// DTLSInnerPlaintext (content, type byte) zero-padded to a multiple of 16.
    fn body_len(cid: bool, content_len: usize) -> usize {
        if cid {
            (content_len + 1).div_ceil(CID_PADDING_GRANULARITY) * CID_PADDING_GRANULARITY
        } else {
            content_len
        }
    }

    /// [`RecordCipher::seal`] appending the record to `out` (a buffer the caller reuses): the
    /// header, the explicit nonce, the content encrypted where it lies, the tag. No allocation
    /// when `out` has the room.
    pub fn seal_into(
        &self,
        content_type: ContentType,
        epoch: u16,
        seq: u64,
        cid: Option<(&[u8], ContentType)>,
        content: &[u8],
        out: &mut Vec<u8>,
    ) {
        let mut explicit = [0u8; 8];
        explicit[..2].copy_from_slice(&epoch.to_be_bytes());
        explicit[2..].copy_from_slice(&seq.to_be_bytes()[2..]);
        let (outer, cid_bytes) = match cid {
            Some((cid_bytes, outer)) => (outer, Some(cid_bytes)),
            None => (content_type, None),
        };
        let body_len = Self::body_len(cid.is_some(), content.len());
        out.reserve(Self::sealed_len(cid_bytes, content.len()));
        emit_header(
            out,
            outer,
            DTLS_1_2,
            epoch,
            seq,
            cid_bytes,
            body_len + PROTECTION_OVERHEAD,
        );
        out.extend_from_slice(&explicit);
        let body_start = out.len();
        out.extend_from_slice(content);
        if cid_bytes.is_some() {
            out.push(content_type.to_u8());
            out.resize(body_start + body_len, 0);
        }
        let aad = AadBuf::new(epoch, seq, outer.to_u8(), cid_bytes, body_len);
        let nonce = self.nonce(&explicit);
        // A record body is at most 2^16 bytes (its length field), far below CCM_8's 2^24, and
        // the AAD at most 269: sealing cannot fail.
        let tag = self
            .ccm
            .seal_in_place(&nonce, aad.as_ref(), &mut out[body_start..])
            .unwrap_or_default();
        out.extend_from_slice(&tag);
    }

    /// Opens a protected fragment. Returns the real content type and the content (for CID
    /// records: the DTLSInnerPlaintext with type byte and padding removed).
    pub fn open(
        &self,
        outer: ContentType,
        epoch: u16,
        seq: u64,
        cid: Option<&[u8]>,
        fragment: &[u8],
    ) -> Result<(ContentType, Vec<u8>), DtlsError> {
        if fragment.len() < PROTECTION_OVERHEAD {
            return Err(DtlsError::Truncated {
                what: "protected record",
                offset: fragment.len(),
            });
        }
        let mut body = fragment.to_vec();
        let (real, range) = self.open_in_place(outer, epoch, seq, cid, &mut body)?;
        body.truncate(range.end);
        body.drain(..range.start);
        Ok((real, body))
    }

    /// Opens a protected fragment where it lies: `fragment` is decrypted in place and the
    /// content is `fragment[range]` (for CID records without the type byte and padding). No
    /// allocation. On an error the fragment's bytes are not meaningful.
    pub fn open_in_place(
        &self,
        outer: ContentType,
        epoch: u16,
        seq: u64,
        cid: Option<&[u8]>,
        fragment: &mut [u8],
    ) -> Result<(ContentType, Range<usize>), DtlsError> {
        if fragment.len() < PROTECTION_OVERHEAD {
            return Err(DtlsError::Truncated {
                what: "protected record",
                offset: fragment.len(),
            });
        }
        let mut explicit = [0u8; 8];
        explicit.copy_from_slice(&fragment[..EXPLICIT_NONCE_LEN]);
        let ct_end = fragment.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&fragment[ct_end..]);
        let body = &mut fragment[EXPLICIT_NONCE_LEN..ct_end];
        let aad = AadBuf::new(epoch, seq, outer.to_u8(), cid, body.len());
        let nonce = self.nonce(&explicit);
        self.ccm
            .open_in_place(&nonce, aad.as_ref(), body, &tag)
            .map_err(|_| DtlsError::BadRecordMac { epoch, seq })?;
        let range = EXPLICIT_NONCE_LEN..ct_end;
        if !outer.has_cid() {
            return Ok((outer, range));
        }
        let end = body
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(DtlsError::Malformed {
                what: "DTLSInnerPlaintext without content type",
                offset: 0,
            })?;
        let real = ContentType::from_u8(body[end])
            .filter(|t| !t.has_cid())
            .ok_or(DtlsError::UnknownContentType(body[end]))?;
        Ok((real, EXPLICIT_NONCE_LEN..EXPLICIT_NONCE_LEN + end))
    }
}
