//! The P-256 operations of the handshake (reference 1.3: ECDHE-ECDSA on secp256r1), where
//! nearly all of a handshake's time goes, done faster than the generic RustCrypto code while
//! staying deterministic:
//!
//! - multiplying the generator (ECDH key generation, the `k·G` of every signature) uses a table
//!   of precomputed multiples of G (64 windows of 4 bits, 16 affine points each, built once per
//!   process): 64 constant-time lookups and mixed additions instead of 256 doublings;
//! - signing is RFC 6979 deterministic ECDSA with SHA-256, exactly as `p256`'s `SigningKey`
//!   signs (same nonce, same signature bytes), only with the table for `k·G`;
//! - verifying uses `ring` (assembly). Verification needs no randomness, so nothing becomes
//!   random; signatures are still parsed by `p256` first, so what is accepted as DER is as
//!   before.
//! - ECDH shared secrets stay `p256`'s (`ring` takes no private key it did not draw from its
//!   own random source, which would make handshakes unrepeatable).
//!
//! The figures behind this choice are in `tests/INTEROP.md`.

use std::sync::OnceLock;

use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::group::Curve;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::elliptic_curve::subtle::ConditionallySelectable;
use p256::elliptic_curve::{Curve as _, Field, FieldBytesEncoding, PrimeField};
use p256::{
    AffinePoint, EncodedPoint, NistP256, NonZeroScalar, ProjectivePoint, PublicKey, Scalar, U256,
};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

/// Bits per window of the generator table.
const WINDOW: usize = 4;
/// Windows covering a 256-bit scalar.
const WINDOWS: usize = 256 / WINDOW;

/// `TABLE[i][j]` = `j · 16^i · G` (the identity for `j = 0`).
type GeneratorTable = [[AffinePoint; 1 << WINDOW]; WINDOWS];

fn generator_table() -> &'static GeneratorTable {
    static TABLE: OnceLock<Box<GeneratorTable>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut projective = Vec::with_capacity(WINDOWS << WINDOW);
        let mut base = ProjectivePoint::GENERATOR;
        for _ in 0..WINDOWS {
            let mut multiple = ProjectivePoint::IDENTITY;
            for _ in 0..(1 << WINDOW) {
                projective.push(multiple);
                multiple += base;
            }
            // `multiple` is now 16 · base: the next window's base.
            base = multiple;
        }
        let mut affine = vec![AffinePoint::IDENTITY; projective.len()];
        ProjectivePoint::batch_normalize(&projective, &mut affine);
        let mut table = Box::new([[AffinePoint::IDENTITY; 1 << WINDOW]; WINDOWS]);
        for (i, row) in table.iter_mut().enumerate() {
            row.copy_from_slice(&affine[i << WINDOW..(i + 1) << WINDOW]);
        }
        table
    })
}

/// `k · G`, in constant time with respect to `k`.
pub fn mul_generator(k: &Scalar) -> ProjectivePoint {
    let table = generator_table();
    let bytes = k.to_repr(); // big-endian
    let mut acc = ProjectivePoint::IDENTITY;
    for (i, row) in table.iter().enumerate() {
        let byte = bytes[31 - i / 2];
        let nibble = if i % 2 == 0 { byte & 0x0F } else { byte >> 4 };
        let mut point = AffinePoint::IDENTITY;
        for (j, candidate) in row.iter().enumerate() {
            point.conditional_assign(candidate, (j as u8).ct_eq_u8(nibble));
        }
        acc += point;
    }
    acc
}

/// Constant-time byte equality as a `Choice`.
trait CtEqU8 {
    fn ct_eq_u8(self, other: u8) -> p256::elliptic_curve::subtle::Choice;
}

impl CtEqU8 for u8 {
    fn ct_eq_u8(self, other: u8) -> p256::elliptic_curve::subtle::Choice {
        use p256::elliptic_curve::subtle::ConstantTimeEq;
        self.ct_eq(&other)
    }
}

/// An ephemeral ECDH key pair (ECDHE, one per handshake).
pub struct EcdhSecret {
    scalar: NonZeroScalar,
}

impl std::fmt::Debug for EcdhSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EcdhSecret { .. }")
    }
}

impl EcdhSecret {
    /// Draws the secret from `rng` exactly as `p256::ecdh::EphemeralSecret::random` does (so a
    /// seeded run sends the same key as before).
    pub fn random(rng: &mut impl CryptoRngCore) -> EcdhSecret {
        EcdhSecret {
            scalar: NonZeroScalar::random(rng),
        }
    }

    /// The public point, uncompressed SEC1 (what the key exchange messages carry).
    pub fn public_point(&self) -> EncodedPoint {
        mul_generator(&self.scalar)
            .to_affine()
            .to_encoded_point(false)
    }

    /// The shared secret's x coordinate (the TLS premaster secret).
    pub fn diffie_hellman(&self, peer: &PublicKey) -> p256::ecdh::SharedSecret {
        p256::ecdh::diffie_hellman(self.scalar, peer.as_affine())
    }
}

/// ECDSA with SHA-256 over `msg`, RFC 6979 nonce: byte for byte what
/// `<SigningKey as Signer<DerSignature>>::sign` gives.
pub fn sign(key: &SigningKey, msg: &[u8]) -> DerSignature {
    let digest = Sha256::digest(msg);
    let d: &Scalar = key.as_nonzero_scalar().as_ref();
    let n = <U256 as FieldBytesEncoding<NistP256>>::encode_field_bytes(&NistP256::ORDER);
    // The digest is exactly 256 bits, so bits2field leaves it as it is.
    let k_bytes = rfc6979::generate_k::<Sha256, _>(&d.to_repr(), &n, &digest, &[]);
    match Option::<Scalar>::from(Scalar::from_repr(k_bytes)).and_then(|k| sign_with(d, &k, &digest))
    {
        Some(signature) => signature.to_der(),
        // k, r or s zero: probability about 2^-256. `p256` itself decides what then happens.
        None => p256::ecdsa::signature::Signer::<DerSignature>::sign(key, msg),
    }
}

/// `r = x(k·G) mod n`, `s = k⁻¹ (z + r d) mod n`; `None` if any of k, r, s is zero.
fn sign_with(d: &Scalar, k: &Scalar, digest: &[u8]) -> Option<Signature> {
    if bool::from(k.is_zero()) {
        return None;
    }
    let z = <Scalar as Reduce<U256>>::reduce_bytes(digest.into());
    let k_inv = Option::<Scalar>::from(k.invert())?;
    let r_point = mul_generator(k).to_affine();
    let r = <Scalar as Reduce<U256>>::reduce_bytes(&r_point.x());
    let s = k_inv * (z + r * d);
    Signature::from_scalars(r, s).ok()
}

/// Which hash a signature was made over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
}

/// Verifies an ECDSA signature (already parsed, so DER acceptance is `p256`'s) over `msg`
/// hashed with `hash`.
pub fn verify(key: &VerifyingKey, msg: &[u8], signature: &Signature, hash: Hash) -> bool {
    let algorithm = match hash {
        Hash::Sha256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
        Hash::Sha384 => &ring::signature::ECDSA_P256_SHA384_ASN1,
    };
    let point = key.to_encoded_point(false);
    let der = signature.to_der();
    ring::signature::UnparsedPublicKey::new(algorithm, point.as_bytes())
        .verify(msg, der.as_bytes())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::ecdsa::signature::{Signer, Verifier};
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};
    use sha2::Sha384;

    #[test]
    fn generator_multiples_match_the_generic_multiplication() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for k in [Scalar::ZERO, Scalar::ONE, Scalar::ZERO - Scalar::ONE] {
            assert_eq!(
                mul_generator(&k).to_affine(),
                (ProjectivePoint::GENERATOR * k).to_affine()
            );
        }
        for _ in 0..50 {
            let k = *NonZeroScalar::random(&mut rng);
            assert_eq!(
                mul_generator(&k).to_affine(),
                (ProjectivePoint::GENERATOR * k).to_affine()
            );
        }
    }

    #[test]
    fn signatures_are_those_of_p256_signing_key() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for len in [0usize, 1, 31, 32, 33, 64, 200, 1000] {
            let key = SigningKey::random(&mut rng);
            let mut msg = vec![0u8; len];
            rng.fill_bytes(&mut msg);
            let theirs: DerSignature = key.sign(&msg);
            assert_eq!(
                sign(&key, &msg).as_bytes(),
                theirs.as_bytes(),
                "message of {len} bytes"
            );
        }
    }

    #[test]
    fn ecdh_keys_and_secrets_are_those_of_p256() {
        let mut a = ChaCha8Rng::seed_from_u64(3);
        let mut b = a.clone();
        let ours = EcdhSecret::random(&mut a);
        let theirs = p256::ecdh::EphemeralSecret::random(&mut b);
        assert_eq!(ours.public_point(), EncodedPoint::from(theirs.public_key()));
        let peer = p256::ecdh::EphemeralSecret::random(&mut a).public_key();
        assert_eq!(
            ours.diffie_hellman(&peer).raw_secret_bytes(),
            theirs.diffie_hellman(&peer).raw_secret_bytes()
        );
    }

    #[test]
    fn verify_agrees_with_p256_on_good_and_bad_signatures() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let key = SigningKey::random(&mut rng);
        let other = SigningKey::random(&mut rng);
        let msg = b"transcript";
        let sig: Signature = key.sign(msg);
        let vk = VerifyingKey::from(&key);
        assert!(verify(&vk, msg, &sig, Hash::Sha256));
        assert!(vk.verify(msg, &sig).is_ok());
        assert!(!verify(&vk, b"other", &sig, Hash::Sha256));
        assert!(!verify(
            &VerifyingKey::from(&other),
            msg,
            &sig,
            Hash::Sha256
        ));
        assert!(!verify(&vk, msg, &sig, Hash::Sha384));
        let prehash = Sha384::digest(msg);
        let sig384: Signature =
            p256::ecdsa::signature::hazmat::PrehashSigner::sign_prehash(&key, &prehash).unwrap();
        assert!(vk.verify_prehash(&prehash, &sig384).is_ok());
        assert!(verify(&vk, msg, &sig384, Hash::Sha384));
    }
}
