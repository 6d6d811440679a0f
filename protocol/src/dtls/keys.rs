//! Key material in the forms Particle keeps it (reference 1.2): P-256 private keys as SEC1
//! `ECPrivateKey` or PKCS#8 DER, public keys as 91-byte SubjectPublicKeyInfo DER, and the
//! SubjectPublicKeyInfo inside an X.509 certificate (for the X.509 mode).

use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};

use super::handshake::Reader;
use super::DtlsError;

/// A P-256 private key from DER: SEC1 `ECPrivateKey` (what Device OS stores) or PKCS#8.
/// Trailing 0xFF padding (as in the DCT slot) is ignored.
pub fn signing_key_from_der(der: &[u8]) -> Result<SigningKey, DtlsError> {
    let der = trim_der(der);
    if let Ok(sk) = p256::SecretKey::from_sec1_der(der) {
        return Ok(sk.into());
    }
    p256::SecretKey::from_pkcs8_der(der)
        .map(Into::into)
        .map_err(|_| DtlsError::BadKey("not a P-256 private key in SEC1 or PKCS#8 DER"))
}

/// A P-256 public key from SubjectPublicKeyInfo DER.
pub fn verifying_key_from_spki(spki: &[u8]) -> Result<VerifyingKey, DtlsError> {
    VerifyingKey::from_public_key_der(trim_der(spki))
        .map_err(|_| DtlsError::BadKey("not a P-256 SubjectPublicKeyInfo"))
}

/// The 91-byte SubjectPublicKeyInfo DER of a public key.
pub fn spki_of(key: &VerifyingKey) -> Vec<u8> {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING { 0x04 ‖ X ‖ Y } }
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let mut out = PREFIX.to_vec();
    out.extend_from_slice(key.to_encoded_point(false).as_bytes());
    out
}

/// Cuts a DER value to the length its outer header announces (drops 0xFF padding).
fn trim_der(der: &[u8]) -> &[u8] {
    match der_header(der, 0) {
        Some((_, hdr, len)) if hdr + len <= der.len() => &der[..hdr + len],
        _ => der,
    }
}

/// (tag, header length, content length) of the DER value at `at`.
fn der_header(der: &[u8], at: usize) -> Option<(u8, usize, usize)> {
    let mut r = Reader::new(der.get(at..)?, "DER");
    let tag = r.u8().ok()?;
    let first = r.u8().ok()? as usize;
    if first < 0x80 {
        return Some((tag, 2, first));
    }
    let n = first & 0x7f;
    if n == 0 || n > 3 {
        return None;
    }
    let len = r
        .take(n)
        .ok()?
        .iter()
        .fold(0usize, |a, &b| (a << 8) | b as usize);
    Some((tag, 2 + n, len))
}

/// The SubjectPublicKeyInfo DER inside an X.509 certificate (RFC 5280 4.1:
/// Certificate → tbsCertificate → [version] serial signature issuer validity subject SPKI).
pub fn spki_from_certificate(cert: &[u8]) -> Result<Vec<u8>, DtlsError> {
    let bad = DtlsError::BadKey("not an X.509 certificate with a P-256 key");
    let (tag, hdr, _) = der_header(cert, 0).ok_or(bad.clone())?;
    if tag != 0x30 {
        return Err(bad);
    }
    // tbsCertificate
    let tbs_at = hdr;
    let (tag, tbs_hdr, tbs_len) = der_header(cert, tbs_at).ok_or(bad.clone())?;
    if tag != 0x30 || tbs_at + tbs_hdr + tbs_len > cert.len() {
        return Err(bad);
    }
    let mut at = tbs_at + tbs_hdr;
    // Optional [0] version.
    if let Some((0xa0, h, l)) = der_header(cert, at) {
        at += h + l;
    }
    // serial, signature, issuer, validity, subject
    for _ in 0..5 {
        let (_, h, l) = der_header(cert, at).ok_or(bad.clone())?;
        at += h + l;
    }
    let (tag, h, l) = der_header(cert, at).ok_or(bad.clone())?;
    if tag != 0x30 || at + h + l > cert.len() {
        return Err(bad);
    }
    let spki = cert[at..at + h + l].to_vec();
    verifying_key_from_spki(&spki)?;
    Ok(spki)
}
