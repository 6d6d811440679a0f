//! AES-128-CCM with an 8-byte tag and a 12-byte nonce, as TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
//! protects DTLS records (reference 1.3; RFC 6655 section 3, RFC 3610): the record cipher of
//! [`super::crypto::RecordCipher`], in place, with one AES dispatch per record.
//!
//! ```text
//! nonce   12 bytes (client/server write IV 4 ‖ explicit nonce 8), so L = 15 - 12 = 3
//! B0      flags 0x5a (Adata 0x40 | ((M-2)/2) << 3 with M = 8 | L-1 = 2) ‖ nonce ‖ len (3, BE)
//! AAD     len (2, BE) ‖ aad, zero-padded to 16; then the message, zero-padded to 16
//! MAC     CBC-MAC over B0, AAD blocks, message blocks: T = first 8 bytes of the last block
//! A_i     flags 0x02 (L-1) ‖ nonce ‖ i (3, BE); S_i = AES(A_i)
//! output  message XOR S_1, S_2, ...; tag = T XOR S_0[..8]
//! ```
//!
//! The CTR keystream is computed in batches of the cipher's parallel width (8 blocks with
//! AES-NI); the CBC-MAC is serial by nature and runs block by block in the same pass.

use aes::cipher::consts::U16;
use aes::cipher::{
    Block, BlockBackend, BlockClosure, BlockEncrypt, BlockSizeUser, KeyInit, ParBlocks,
};
use aes::Aes128;

/// Tag length (CCM_8).
pub const TAG_LEN: usize = 8;
/// Nonce length (4-byte implicit IV ‖ 8-byte explicit nonce).
pub const NONCE_LEN: usize = 12;
/// Longest message the 3-byte length field of B0 holds.
pub const MAX_MESSAGE_LEN: usize = (1 << 24) - 1;
/// Longest AAD the 2-byte AAD length encoding holds (RFC 3610 2.2: `0 < l(a) < 2^16 - 2^8`).
pub const MAX_AAD_LEN: usize = 0xff00 - 1;

/// B0's flags: Adata (there is AAD, always in DTLS), M = 8, and L - 1 (L = 15 - nonce length:
/// 3 in DTLS).
fn b0_flags(has_aad: bool, l: usize) -> u8 {
    (u8::from(has_aad) << 6) | (((TAG_LEN as u8 - 2) / 2) << 3) | (l as u8 - 1)
}

/// Why CCM refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CcmError {
    #[error("CCM_8 message of {0} bytes is longer than the 3-byte length field holds")]
    MessageTooLong(usize),
    #[error("CCM nonce of {0} bytes (7 to 13 are allowed)")]
    NonceLength(usize),
    #[error("CCM_8 additional data of {0} bytes is longer than its 2-byte encoding holds")]
    AadTooLong(usize),
    #[error("CCM_8 tag does not match")]
    TagMismatch,
}

/// AES-128-CCM_8 under one key.
///
/// It keeps the 16-byte key and expands it at each record rather than holding the expanded
/// schedule: `Aes128` with run-time CPU detection carries both the AES-NI and the bit-sliced
/// software schedules (about 700 B), and a device holds four record ciphers (two per side of
/// a fleet device's session), which made the schedules about 2.9 KB of every simulated device.
/// The expansion (ten AES-NI key-assist rounds) is well under 1 % of sealing a 500-byte record.
#[derive(Clone)]
pub struct Ccm8 {
    key: [u8; 16],
}

impl core::fmt::Debug for Ccm8 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Ccm8 { .. }")
    }
}

impl Ccm8 {
    pub fn new(key: &[u8; 16]) -> Self {
        Self { key: *key }
    }

    fn aes(&self) -> Aes128 {
        Aes128::new(&self.key.into())
    }

    /// Encrypts `data` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CcmError> {
        self.seal_with_nonce(nonce, aad, data)
    }

    /// [`Ccm8::seal_in_place`] with any CCM nonce length (7 to 13 bytes; RFC 3610's vectors
    /// use 13).
    fn seal_with_nonce(
        &self,
        nonce: &[u8],
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CcmError> {
        check_lengths(nonce, aad, data)?;
        let mut tag = [0u8; TAG_LEN];
        self.aes().encrypt_with_backend(Pass {
            nonce,
            aad,
            data,
            decrypt: false,
            tag: &mut tag,
        });
        Ok(tag)
    }

    /// Decrypts `data` in place and checks `tag` (in constant time). On a mismatch `data` is
    /// zeroed: no unauthenticated plaintext is left behind.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CcmError> {
        self.open_with_nonce(nonce, aad, data, tag)
    }

    fn open_with_nonce(
        &self,
        nonce: &[u8],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CcmError> {
        check_lengths(nonce, aad, data)?;
        let mut computed = [0u8; TAG_LEN];
        self.aes().encrypt_with_backend(Pass {
            nonce,
            aad,
            data: &mut *data,
            decrypt: true,
            tag: &mut computed,
        });
        let diff = computed
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            data.fill(0);
            return Err(CcmError::TagMismatch);
        }
        Ok(())
    }
}

fn check_lengths(nonce: &[u8], aad: &[u8], data: &[u8]) -> Result<(), CcmError> {
    if !(7..=13).contains(&nonce.len()) {
        return Err(CcmError::NonceLength(nonce.len()));
    }
    let l = 15 - nonce.len();
    if l < 8 && data.len() >> (8 * l) != 0 || data.len() > MAX_MESSAGE_LEN {
        return Err(CcmError::MessageTooLong(data.len()));
    }
    if aad.len() > MAX_AAD_LEN {
        return Err(CcmError::AadTooLong(aad.len()));
    }
    Ok(())
}

/// One CCM pass (seal or open) run inside the AES backend: CBC-MAC block by block, the CTR
/// keystream a parallel batch at a time.
struct Pass<'a> {
    /// 7 to 13 bytes.
    nonce: &'a [u8],
    aad: &'a [u8],
    data: &'a mut [u8],
    decrypt: bool,
    tag: &'a mut [u8; TAG_LEN],
}

impl BlockSizeUser for Pass<'_> {
    type BlockSize = U16;
}

/// The CTR keystream: counter blocks A_i encrypted a batch at a time.
struct Keystream<B: BlockBackend<BlockSize = U16>> {
    batch: ParBlocks<B>,
    /// Next block of `batch` to use.
    used: usize,
    /// Counter of `batch[0]`.
    base: u32,
    template: Block<B>,
    /// Bytes of the counter (L).
    l: usize,
}

impl<B: BlockBackend<BlockSize = U16>> Keystream<B> {
    fn new(nonce: &[u8]) -> Self {
        let mut template = Block::<B>::default();
        template[0] = (15 - nonce.len() - 1) as u8;
        template[1..1 + nonce.len()].copy_from_slice(nonce);
        Self {
            batch: ParBlocks::<B>::default(),
            used: usize::MAX,
            base: 0,
            template,
            l: 15 - nonce.len(),
        }
    }

    /// The next keystream block (S_0, S_1, ...).
    fn next(&mut self, backend: &mut B) -> &Block<B> {
        let width = self.batch.len();
        if self.used >= width {
            if self.used != usize::MAX {
                self.base = self.base.wrapping_add(width as u32);
            }
            for (i, block) in self.batch.iter_mut().enumerate() {
                *block = self.template;
                let counter = u64::from(self.base.wrapping_add(i as u32)).to_be_bytes();
                block[16 - self.l..].copy_from_slice(&counter[8 - self.l..]);
            }
            backend.proc_par_blocks_inplace(&mut self.batch);
            self.used = 0;
        }
        let block = &self.batch[self.used];
        self.used += 1;
        block
    }
}

fn xor_into(mac: &mut [u8], bytes: &[u8]) {
    for (m, b) in mac.iter_mut().zip(bytes) {
        *m ^= b;
    }
}

impl BlockClosure for Pass<'_> {
    fn call<B: BlockBackend<BlockSize = U16>>(self, backend: &mut B) {
        let len = self.data.len() as u64;
        let l = 15 - self.nonce.len();
        // B0.
        let mut mac = Block::<B>::default();
        mac[0] = b0_flags(!self.aad.is_empty(), l);
        mac[1..1 + self.nonce.len()].copy_from_slice(self.nonce);
        mac[16 - l..].copy_from_slice(&len.to_be_bytes()[8 - l..]);
        backend.proc_block_inplace(&mut mac);
        // The AAD with its 2-byte length in front.
        if !self.aad.is_empty() {
            let first = self.aad.len().min(14);
            xor_into(&mut mac[..2], &(self.aad.len() as u16).to_be_bytes());
            xor_into(&mut mac[2..2 + first], &self.aad[..first]);
            backend.proc_block_inplace(&mut mac);
            for block in self.aad[first..].chunks(16) {
                xor_into(&mut mac, block);
                backend.proc_block_inplace(&mut mac);
            }
        }
        let mut keystream = Keystream::<B>::new(self.nonce);
        let mut s0 = [0u8; TAG_LEN];
        s0.copy_from_slice(&keystream.next(backend)[..TAG_LEN]);
        // The message: MAC over the plaintext, XOR with S_1, S_2, ...
        for block in self.data.chunks_mut(16) {
            let key = keystream.next(backend);
            if self.decrypt {
                xor_into(block, key);
                xor_into(&mut mac, block);
            } else {
                xor_into(&mut mac, block);
                xor_into(block, key);
            }
            backend.proc_block_inplace(&mut mac);
        }
        for (t, (m, s)) in self.tag.iter_mut().zip(mac.iter().zip(&s0)) {
            *t = m ^ s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccm::aead::AeadInPlace;
    use ccm::consts::{U12, U8};

    type Reference = ccm::Ccm<Aes128, U8, U12>;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3610 section 8, packet vectors 1 to 3 (M = 8, 13-byte nonces, 8 bytes of header
    /// as AAD).
    #[test]
    fn rfc3610_packet_vectors() {
        let key: [u8; 16] = unhex("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf")
            .try_into()
            .unwrap();
        let ccm = Ccm8::new(&key);
        for (nonce, len, cipher, tag) in [
            (
                "00000003020100a0a1a2a3a4a5",
                0x1f,
                "588c979a61c663d2f066d0c2c0f989806d5f6b61dac384",
                "17e8d12cfdf926e0",
            ),
            (
                "00000004030201a0a1a2a3a4a5",
                0x20,
                "72c91a36e135f8cf291ca894085c87e3cc15c439c9e43a3b",
                "a091d56e10400916",
            ),
            (
                "00000005040302a0a1a2a3a4a5",
                0x21,
                "51b1e5f44a197d1da46b0f8e2d282ae871e838bb64da859657",
                "4adaa76fbd9fb0c5",
            ),
        ] {
            let packet: Vec<u8> = (0..len).collect();
            let (aad, plain) = packet.split_at(8);
            let nonce = unhex(nonce);
            let mut data = plain.to_vec();
            let got = ccm.seal_with_nonce(&nonce, aad, &mut data).unwrap();
            assert_eq!(data, unhex(cipher));
            assert_eq!(got.to_vec(), unhex(tag));
            ccm.open_with_nonce(&nonce, aad, &mut data, &got).unwrap();
            assert_eq!(data, plain);
        }
    }

    /// NIST SP 800-38C appendix C, example 3: a 12-byte nonce and an 8-byte tag, the shape
    /// of CCM_8 in DTLS.
    #[test]
    fn sp800_38c_example_3_is_ccm8_with_a_dtls_nonce() {
        let key: [u8; 16] = unhex("404142434445464748494a4b4c4d4e4f")
            .try_into()
            .unwrap();
        let nonce: [u8; 12] = unhex("101112131415161718191a1b").try_into().unwrap();
        let aad = unhex("000102030405060708090a0b0c0d0e0f10111213");
        let plain = unhex("202122232425262728292a2b2c2d2e2f3031323334353637");
        let mut data = plain.clone();
        let tag = Ccm8::new(&key)
            .seal_in_place(&nonce, &aad, &mut data)
            .unwrap();
        assert_eq!(
            data,
            unhex("e3b201a9f5b71a7a9b1ceaeccd97e70b6176aad9a4428aa5")
        );
        assert_eq!(tag.to_vec(), unhex("484392fbc1b09951"));
    }

    #[test]
    fn matches_the_ccm_crate_for_every_length_up_to_a_record() {
        let key: [u8; 16] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        let ours = Ccm8::new(&key);
        let reference = Reference::new((&key).into());
        let mut seed = 0x1234_5678u32;
        let mut byte = move || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) as u8
        };
        for len in (0..300).chain([511, 512, 513, 544, 1024, 1500, 16_384]) {
            for aad_len in [0usize, 13, 14, 15, 16, 17, 23, 40] {
                let nonce: [u8; 12] = core::array::from_fn(|_| byte());
                let aad: Vec<u8> = (0..aad_len).map(|_| byte()).collect();
                let plain: Vec<u8> = (0..len).map(|_| byte()).collect();
                let mut a = plain.clone();
                let tag = ours.seal_in_place(&nonce, &aad, &mut a).unwrap();
                let mut b = plain.clone();
                let want = reference
                    .encrypt_in_place_detached((&nonce).into(), &aad, &mut b)
                    .unwrap();
                assert_eq!(a, b, "ciphertext, len {len} aad {aad_len}");
                assert_eq!(&tag[..], &want[..], "tag, len {len} aad {aad_len}");
                ours.open_in_place(&nonce, &aad, &mut a, &tag).unwrap();
                assert_eq!(a, plain);
            }
        }
    }

    #[test]
    fn a_wrong_tag_or_aad_is_refused_and_leaves_no_plaintext() {
        let ours = Ccm8::new(&[9; 16]);
        let nonce = [1; 12];
        let mut data = b"firmware chunk".to_vec();
        let tag = ours.seal_in_place(&nonce, b"aad", &mut data).unwrap();
        let sealed = data.clone();
        let mut bad = tag;
        bad[7] ^= 1;
        assert_eq!(
            ours.open_in_place(&nonce, b"aad", &mut data, &bad),
            Err(CcmError::TagMismatch)
        );
        assert!(data.iter().all(|&b| b == 0));
        let mut data = sealed.clone();
        assert_eq!(
            ours.open_in_place(&nonce, b"aaD", &mut data, &tag),
            Err(CcmError::TagMismatch)
        );
        let mut data = sealed;
        ours.open_in_place(&nonce, b"aad", &mut data, &tag).unwrap();
        assert_eq!(data, b"firmware chunk");
    }
}
