//! The P-256 candidates behind `protocol::dtls::ec` (figures in `tests/INTEROP.md`): per
//! operation of a handshake, RustCrypto `p256` as it is, `p256` with our generator table, and
//! `ring`. Run with `cargo run --release -p hil-protocol --example p256_candidates`.

use std::time::Instant;

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use protocol::dtls::ec;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

fn time(name: &str, mut f: impl FnMut()) {
    f(); // warm up (the generator table is built on first use)
    let n = 400;
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name:<44} {:>7.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    );
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let key = SigningKey::random(&mut rng);
    let vk = VerifyingKey::from(&key);
    let msg = [7u8; 200];
    let der: DerSignature = key.sign(&msg);
    let sig = Signature::from_der(der.as_bytes()).expect("own signature");
    let peer = p256::ecdh::EphemeralSecret::random(&mut rng).public_key();
    let sys = ring::rand::SystemRandom::new();

    time("ECDSA sign: p256", || {
        let _: DerSignature = key.sign(&msg);
    });
    time("ECDSA sign: p256 + generator table", || {
        std::hint::black_box(ec::sign(&key, &msg));
    });
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &sys,
    )
    .expect("ring key");
    let ring_key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        pkcs8.as_ref(),
        &sys,
    )
    .expect("ring key");
    time("ECDSA sign: ring (random nonce)", || {
        std::hint::black_box(ring_key.sign(&sys, &msg).expect("sign"));
    });
    time("ECDSA verify: p256", || {
        vk.verify(&msg, &sig).expect("verifies");
    });
    time("ECDSA verify: ring", || {
        assert!(ec::verify(&vk, &msg, &sig, ec::Hash::Sha256));
    });
    time("ECDH key pair: p256", || {
        let s = p256::ecdh::EphemeralSecret::random(&mut rng);
        std::hint::black_box(p256::EncodedPoint::from(s.public_key()));
    });
    time("ECDH key pair: p256 + generator table", || {
        std::hint::black_box(ec::EcdhSecret::random(&mut rng).public_point());
    });
    let mine = ec::EcdhSecret::random(&mut rng);
    time("ECDH shared secret: p256", || {
        std::hint::black_box(mine.diffie_hellman(&peer));
    });
    let ring_peer = ring::agreement::UnparsedPublicKey::new(
        &ring::agreement::ECDH_P256,
        p256::EncodedPoint::from(peer).as_bytes().to_vec(),
    );
    time("ECDH key pair + shared secret: ring (own RNG)", || {
        let s = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &sys)
            .expect("key");
        std::hint::black_box(s.compute_public_key().expect("public"));
        ring::agreement::agree_ephemeral(s, &ring_peer, |k| {
            std::hint::black_box(k.len());
        })
        .expect("agree");
    });
}
