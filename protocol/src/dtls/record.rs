//! DTLS 1.2 record header (RFC 6347 section 4.1) with the draft-05 connection ID extension
//! (reference section 1.3): content type 25 (and 253, the "move session" alias of 1.4) carries
//! the receiver's connection ID between the sequence number and the length.
//!
//! ```text
//! offset  size  field
//! 0       1     content type (20 ccs, 21 alert, 22 handshake, 23 application data, 25 cid, 253 cid-move)
//! 1       2     version (0xfefd = DTLS 1.2)
//! 3       2     epoch
//! 5       6     sequence number
//! 11      n     connection ID (types 25 and 253 only; n is known to the receiver, 8 here)
//! 11+n    2     length of the fragment
//! 13+n    len   fragment
//! ```

use super::DtlsError;

/// Byte ranges of the record header (without the optional connection ID).
pub mod field {
    use core::ops::Range;
    pub const CONTENT_TYPE: usize = 0;
    pub const VERSION: Range<usize> = 1..3;
    pub const EPOCH: Range<usize> = 3..5;
    pub const SEQ: Range<usize> = 5..11;
    /// Start of the connection ID (CID records) or of the length field (all other records).
    pub const CID_OR_LENGTH: usize = 11;
    /// Header length of a record without a connection ID.
    pub const HEADER_LEN: usize = 13;
}

/// The record version of DTLS 1.2.
pub const DTLS_1_2: u16 = 0xfefd;
/// The record version a ClientHello may use on its first record (DTLS 1.0), accepted on input.
pub const DTLS_1_0: u16 = 0xfeff;

/// Record content types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentType {
    ChangeCipherSpec,
    Alert,
    Handshake,
    ApplicationData,
    /// draft-ietf-tls-dtls-connection-id-05 `tls12_cid` (25).
    Cid,
    /// Particle's `ALT_CID_CONTENT_TYPE` (253): a CID record sent by a resumed client until it
    /// has heard from the server (reference 1.4).
    CidMove,
}

impl ContentType {
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            20 => Self::ChangeCipherSpec,
            21 => Self::Alert,
            22 => Self::Handshake,
            23 => Self::ApplicationData,
            25 => Self::Cid,
            253 => Self::CidMove,
            _ => return None,
        })
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::ChangeCipherSpec => 20,
            Self::Alert => 21,
            Self::Handshake => 22,
            Self::ApplicationData => 23,
            Self::Cid => 25,
            Self::CidMove => 253,
        }
    }

    /// Whether records of this type carry a connection ID in their header.
    pub fn has_cid(self) -> bool {
        matches!(self, Self::Cid | Self::CidMove)
    }
}

/// A checked view of one record at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Record<T: AsRef<[u8]>> {
    buffer: T,
    cid_len: usize,
}

impl<T: AsRef<[u8]>> Record<T> {
    /// Checks that the buffer holds a complete record header and fragment; `cid_len` is the
    /// length of the connection ID this receiver expects in type-25/253 records.
    pub fn new_checked(buffer: T, cid_len: usize) -> Result<Self, DtlsError> {
        let record = Self { buffer, cid_len };
        let bytes = record.buffer.as_ref();
        if bytes.len() < field::HEADER_LEN {
            return Err(DtlsError::Truncated {
                what: "record header",
                offset: bytes.len(),
            });
        }
        let ct = bytes[field::CONTENT_TYPE];
        let ct = ContentType::from_u8(ct).ok_or(DtlsError::UnknownContentType(ct))?;
        let _ = ct;
        if bytes.len() < record.header_len() {
            return Err(DtlsError::Truncated {
                what: "record header",
                offset: bytes.len(),
            });
        }
        if bytes.len() < record.total_len() {
            return Err(DtlsError::Truncated {
                what: "record fragment",
                offset: bytes.len(),
            });
        }
        Ok(record)
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn content_type(&self) -> ContentType {
        // Checked in new_checked.
        ContentType::from_u8(self.bytes()[field::CONTENT_TYPE]).unwrap_or(ContentType::Alert)
    }

    pub fn version(&self) -> u16 {
        let b = &self.bytes()[field::VERSION];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn epoch(&self) -> u16 {
        let b = &self.bytes()[field::EPOCH];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn seq(&self) -> u64 {
        read_u48(&self.bytes()[field::SEQ])
    }

    fn cid_len_here(&self) -> usize {
        match ContentType::from_u8(self.bytes()[field::CONTENT_TYPE]) {
            Some(ct) if ct.has_cid() => self.cid_len,
            _ => 0,
        }
    }

    /// The connection ID (CID records only).
    pub fn cid(&self) -> Option<&[u8]> {
        let n = self.cid_len_here();
        self.content_type()
            .has_cid()
            .then(|| &self.bytes()[field::CID_OR_LENGTH..field::CID_OR_LENGTH + n])
    }

    /// Header length including the connection ID.
    pub fn header_len(&self) -> usize {
        field::HEADER_LEN + self.cid_len_here()
    }

    /// The record's length field.
    pub fn length(&self) -> usize {
        let at = field::CID_OR_LENGTH + self.cid_len_here();
        let b = self.bytes();
        u16::from_be_bytes([b[at], b[at + 1]]) as usize
    }

    /// Header plus fragment.
    pub fn total_len(&self) -> usize {
        self.header_len() + self.length()
    }

    /// The record header bytes.
    pub fn header(&self) -> &[u8] {
        &self.bytes()[..self.header_len()]
    }

    pub fn fragment(&self) -> &[u8] {
        &self.bytes()[self.header_len()..self.total_len()]
    }
}

/// A parsed record: header fields plus the (possibly still protected) fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRepr<'a> {
    pub content_type: ContentType,
    pub version: u16,
    pub epoch: u16,
    pub seq: u64,
    /// Present exactly when `content_type.has_cid()`.
    pub cid: Option<&'a [u8]>,
    pub fragment: &'a [u8],
}

impl<'a> RecordRepr<'a> {
    /// Parses the record at the start of `bytes`; returns it and the number of bytes it takes.
    pub fn parse(bytes: &'a [u8], cid_len: usize) -> Result<(Self, usize), DtlsError> {
        let record = Record::new_checked(bytes, cid_len)?;
        let version = record.version();
        if version != DTLS_1_2 && version != DTLS_1_0 {
            return Err(DtlsError::BadVersion(version));
        }
        let total = record.total_len();
        let header_len = record.header_len();
        Ok((
            Self {
                content_type: record.content_type(),
                version,
                epoch: record.epoch(),
                seq: record.seq(),
                cid: record
                    .content_type()
                    .has_cid()
                    .then(|| &bytes[field::CID_OR_LENGTH..header_len - 2]),
                fragment: &bytes[header_len..total],
            },
            total,
        ))
    }

    /// Header length on the wire.
    pub fn header_len(&self) -> usize {
        field::HEADER_LEN + self.cid.map_or(0, <[u8]>::len)
    }

    /// Appends header and fragment to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        emit_header(
            out,
            self.content_type,
            self.version,
            self.epoch,
            self.seq,
            self.cid,
            self.fragment.len(),
        );
        out.extend_from_slice(self.fragment);
    }
}

/// Appends a record header to `out`.
pub fn emit_header(
    out: &mut Vec<u8>,
    content_type: ContentType,
    version: u16,
    epoch: u16,
    seq: u64,
    cid: Option<&[u8]>,
    length: usize,
) {
    out.push(content_type.to_u8());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes()[2..]);
    if let Some(cid) = cid {
        out.extend_from_slice(cid);
    }
    out.extend_from_slice(&(length as u16).to_be_bytes());
}

/// Splits a datagram into records. Stops at the first malformed record and returns the error.
pub fn parse_datagram(datagram: &[u8], cid_len: usize) -> Result<Vec<RecordRepr<'_>>, DtlsError> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < datagram.len() {
        let (record, used) =
            RecordRepr::parse(&datagram[at..], cid_len).map_err(|e| e.shifted(at))?;
        records.push(record);
        at += used;
    }
    Ok(records)
}

pub(crate) fn read_u48(b: &[u8]) -> u64 {
    b.iter()
        .take(6)
        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_RECORD: &str = "19fefd00010000000000017b6c8c5626d7bc5e004000010000000000012eb2da7b2ee543c9eb1d263a084cefa192c777cf453b2ae1626901f8acbea98c9d7591a976406568dd4c59137d28780906acb4b517bc98b2";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn cid_record_from_capture_parses_and_reemits() {
        let bytes = unhex(HELLO_RECORD);
        let (rec, used) = RecordRepr::parse(&bytes, 8).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(rec.content_type, ContentType::Cid);
        assert_eq!((rec.epoch, rec.seq), (1, 1));
        assert_eq!(rec.cid, Some(&unhex("7b6c8c5626d7bc5e")[..]));
        assert_eq!(rec.fragment.len(), 64);
        let mut out = Vec::new();
        rec.emit(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn truncated_record_is_an_error_at_every_length() {
        let bytes = unhex(HELLO_RECORD);
        for n in 0..bytes.len() {
            assert!(matches!(
                RecordRepr::parse(&bytes[..n], 8),
                Err(DtlsError::Truncated { .. })
            ));
        }
    }
}
