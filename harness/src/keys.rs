//! Key files: the cloud's and the devices' P-256 key pairs in the forms Particle uses (reference
//! `particle-protocol.md` 1.2, `particle-cloud-api.md` 6), so the same files serve the local
//! cloud, the emulated devices and a real board pointed at the local cloud.
//!
//! # A key directory
//!
//! | file | content |
//! |---|---|
//! | `server.der` | server private key, SEC1 `ECPrivateKey` DER |
//! | `server.pem` | the same, PEM (`EC PRIVATE KEY`) |
//! | `server.pub.der` | server public key, SubjectPublicKeyInfo DER (91 bytes): what a device pins (`particle keys server server.pub.der --host <ip>`) |
//! | `server.pub.pem` | the same, PEM (`PUBLIC KEY`) |
//! | `device-<id>.der` | device private key, SEC1 `ECPrivateKey` DER: what Device OS keeps in DCT `alt_device_private_key` |
//! | `device-<id>.pem` | the same, PEM |
//! | `device-<id>.pub.der` | device public key, SubjectPublicKeyInfo DER (91 bytes) |
//! | `device-<id>.pub.pem` | the same, PEM |
//!
//! `<id>` is the 12-byte device id as 24 lowercase hex digits. [`KeyDir::device_keys`] also
//! registers the files `particle keys save` writes for a real board (`<id>.der`, a private
//! key padded with 0xFF, and `<id>.pub.pem`), so a lab board's keys can be dropped in as they
//! come. Other files are ignored.
//!
//! Every loader accepts DER or PEM, SEC1 or PKCS#8 for private keys, SubjectPublicKeyInfo for
//! public keys (a private key file stands for its public key too), and ignores trailing 0xFF
//! padding (DCT slots, `particle keys` images).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::der::pem;
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use protocol::dtls::keys::{signing_key_from_der, spki_of, verifying_key_from_spki};
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, OsRng, RngCore, SeedableRng};

/// Length of a device id in bytes (reference 1.2).
pub const DEVICE_ID_LEN: usize = 12;

/// A device id: 12 bytes, shown as 24 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; DEVICE_ID_LEN]);

impl DeviceId {
    /// A random id (as the factory assigns one).
    pub fn random(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut id = [0u8; DEVICE_ID_LEN];
        rng.fill_bytes(&mut id);
        Self(id)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl FromStr for DeviceId {
    type Err = KeyError;

    /// 24 hex digits, either case.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bad = |reason: String| KeyError::BadDeviceId {
            given: s.to_string(),
            reason,
        };
        if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(bad(format!("{c:?} is not a hex digit")));
        }
        if s.len() != 2 * DEVICE_ID_LEN {
            return Err(bad(format!("it has {} digits", s.len())));
        }
        let mut id = [0u8; DEVICE_ID_LEN];
        hex::decode_to_slice(s, &mut id).map_err(|e| bad(e.to_string()))?;
        Ok(Self(id))
    }
}

impl From<[u8; DEVICE_ID_LEN]> for DeviceId {
    fn from(id: [u8; DEVICE_ID_LEN]) -> Self {
        Self(id)
    }
}

/// What went wrong with a key file or a device id, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} already exists (keys are never overwritten unless asked to)")]
    Exists { path: PathBuf },
    #[error("{path} is not a P-256 private key (SEC1 or PKCS#8, DER or PEM): {reason}")]
    NotPrivateKey { path: PathBuf, reason: String },
    #[error(
        "{path} is not a P-256 public key (SubjectPublicKeyInfo or a private key, DER or PEM): \
         {reason}"
    )]
    NotPublicKey { path: PathBuf, reason: String },
    #[error("device id {given:?} is not 24 hex digits: {reason}")]
    BadDeviceId { given: String, reason: String },
    #[error("{dir} holds no {what} ({expected})")]
    Missing {
        dir: PathBuf,
        what: &'static str,
        expected: String,
    },
    #[error("{a} and {b} hold different keys for device {id}")]
    Conflict {
        id: DeviceId,
        a: PathBuf,
        b: PathBuf,
    },
}

/// The source of randomness for new keys: the operating system, or a seed for reproducible
/// keys in tests (never for keys a real board or cloud uses).
#[derive(Debug)]
pub enum KeyRng {
    Os(OsRng),
    Seeded(Box<ChaCha20Rng>),
}

impl KeyRng {
    /// `None`: the operating system's RNG.
    pub fn new(seed: Option<u64>) -> Self {
        match seed {
            Some(seed) => Self::Seeded(Box::new(ChaCha20Rng::seed_from_u64(seed))),
            None => Self::Os(OsRng),
        }
    }
}

impl RngCore for KeyRng {
    fn next_u32(&mut self) -> u32 {
        match self {
            Self::Os(r) => r.next_u32(),
            Self::Seeded(r) => r.next_u32(),
        }
    }
    fn next_u64(&mut self) -> u64 {
        match self {
            Self::Os(r) => r.next_u64(),
            Self::Seeded(r) => r.next_u64(),
        }
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        match self {
            Self::Os(r) => r.fill_bytes(dest),
            Self::Seeded(r) => r.fill_bytes(dest),
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        match self {
            Self::Os(r) => r.try_fill_bytes(dest),
            Self::Seeded(r) => r.try_fill_bytes(dest),
        }
    }
}

impl CryptoRng for KeyRng {}

/// A new P-256 key pair.
pub fn generate_key(rng: &mut (impl RngCore + CryptoRng)) -> SigningKey {
    SigningKey::random(rng)
}

/// A private key from a file: SEC1 or PKCS#8, DER (0xFF padding ignored) or PEM.
pub fn load_signing_key(path: impl AsRef<Path>) -> Result<SigningKey, KeyError> {
    let path = path.as_ref();
    let bytes = read(path)?;
    signing_key_from_bytes(&bytes).map_err(|reason| KeyError::NotPrivateKey {
        path: path.to_path_buf(),
        reason,
    })
}

/// A public key from a file: SubjectPublicKeyInfo DER (0xFF padding ignored, so the 320-byte
/// `particle keys server` image works) or PEM, or the public half of a private key file.
pub fn load_verifying_key(path: impl AsRef<Path>) -> Result<VerifyingKey, KeyError> {
    let path = path.as_ref();
    let bytes = read(path)?;
    verifying_key_from_bytes(&bytes).map_err(|reason| KeyError::NotPublicKey {
        path: path.to_path_buf(),
        reason,
    })
}

/// The SEC1 `ECPrivateKey` DER of a key, 121 bytes, with the curve and the public key as
/// openssl and `particle keys` write it. The curve parameters matter: mbed TLS 2.x
/// (`pk_parse_key_sec1_der`) takes the group from them, a key without them does not load.
///
/// ```text
/// offset size
/// 0      2    30 77             SEQUENCE, 119 bytes
/// 2      3    02 01 01          version 1
/// 5      2    04 20             privateKey OCTET STRING, 32 bytes
/// 7      32   d
/// 39     12   a0 0a 06 08 2a 86 48 ce 3d 03 01 07   [0] namedCurve prime256v1
/// 51     5    a1 44 03 42 00    [1] publicKey BIT STRING, 66 bytes, no unused bits
/// 56     65   04 || X || Y      uncompressed point
/// ```
pub fn private_key_der(key: &SigningKey) -> Vec<u8> {
    const HEAD: [u8; 7] = [0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];
    const CURVE_AND_POINT_HEAD: [u8; 17] = [
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0xa1, 0x44, 0x03,
        0x42, 0x00,
    ];
    let mut der = Vec::with_capacity(121);
    der.extend_from_slice(&HEAD);
    der.extend_from_slice(&key.to_bytes());
    der.extend_from_slice(&CURVE_AND_POINT_HEAD);
    der.extend_from_slice(key.verifying_key().to_encoded_point(false).as_bytes());
    der
}

/// The SEC1 PEM (`EC PRIVATE KEY`) of a key.
pub fn private_key_pem(key: &SigningKey) -> String {
    pem_string("EC PRIVATE KEY", &private_key_der(key))
}

/// The SubjectPublicKeyInfo DER (91 bytes) of a public key.
pub fn public_key_der(key: &VerifyingKey) -> Vec<u8> {
    spki_of(key)
}

/// The SubjectPublicKeyInfo PEM (`PUBLIC KEY`) of a public key.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    match key.to_public_key_pem(LineEnding::LF) {
        Ok(pem) => pem,
        Err(_) => pem_string("PUBLIC KEY", &spki_of(key)),
    }
}

fn pem_string(label: &str, der: &[u8]) -> String {
    pem::encode_string(label, LineEnding::LF, der).unwrap_or_default()
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The PEM blocks in a text: (label, DER).
fn pem_blocks(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not DER, and not PEM text".to_string())?;
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(begin) = rest.find("-----BEGIN ") {
        let after = &rest[begin..];
        let label_end = after[11..]
            .find("-----")
            .ok_or("a PEM BEGIN line without its closing dashes")?;
        let label = &after[11..11 + label_end];
        let end_marker = format!("-----END {label}-----");
        let end = after
            .find(&end_marker)
            .ok_or_else(|| format!("the PEM block {label:?} has no END line"))?;
        let block = &after[..end + end_marker.len()];
        let (_, der) =
            pem::decode_vec(block.as_bytes()).map_err(|e| format!("PEM block {label:?}: {e}"))?;
        blocks.push((label.to_string(), der));
        rest = &after[end + end_marker.len()..];
    }
    if blocks.is_empty() {
        return Err("not DER, and no PEM block".into());
    }
    Ok(blocks)
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn signing_key_from_bytes(bytes: &[u8]) -> Result<SigningKey, String> {
    if !looks_like_pem(bytes) {
        return signing_key_from_der(bytes).map_err(|e| e.to_string());
    }
    let blocks = pem_blocks(bytes)?;
    // `openssl ecparam -genkey` writes an EC PARAMETERS block first: take the key block.
    for (label, der) in &blocks {
        match label.as_str() {
            "EC PRIVATE KEY" => {
                return p256::SecretKey::from_sec1_der(der)
                    .map(Into::into)
                    .map_err(|e| format!("EC PRIVATE KEY block: {e}"))
            }
            "PRIVATE KEY" => {
                return p256::SecretKey::from_pkcs8_der(der)
                    .map(Into::into)
                    .map_err(|e| format!("PRIVATE KEY block: {e}"))
            }
            _ => {}
        }
    }
    let labels: Vec<&str> = blocks.iter().map(|(l, _)| l.as_str()).collect();
    Err(format!("PEM blocks {labels:?} hold no private key"))
}

/// A public key from bytes: SubjectPublicKeyInfo DER or PEM, or a private key (its public half).
pub fn verifying_key_from_bytes(bytes: &[u8]) -> Result<VerifyingKey, String> {
    if !looks_like_pem(bytes) {
        return verifying_key_from_spki(bytes).or_else(|spki_error| {
            signing_key_from_der(bytes)
                .map(|k| *k.verifying_key())
                .map_err(|_| spki_error.to_string())
        });
    }
    let blocks = pem_blocks(bytes)?;
    for (label, der) in &blocks {
        if label == "PUBLIC KEY" {
            return verifying_key_from_spki(der).map_err(|e| format!("PUBLIC KEY block: {e}"));
        }
    }
    signing_key_from_bytes(bytes)
        .map(|k| *k.verifying_key())
        .map_err(|_| {
            let labels: Vec<&str> = blocks.iter().map(|(l, _)| l.as_str()).collect();
            format!("PEM blocks {labels:?} hold no public or private key")
        })
}

/// The four files of one key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// SEC1 `ECPrivateKey` DER.
    pub private_der: PathBuf,
    /// SEC1 PEM.
    pub private_pem: PathBuf,
    /// SubjectPublicKeyInfo DER, 91 bytes.
    pub public_der: PathBuf,
    /// SubjectPublicKeyInfo PEM.
    pub public_pem: PathBuf,
}

impl KeyFiles {
    fn with_stem(dir: &Path, stem: &str) -> Self {
        Self {
            private_der: dir.join(format!("{stem}.der")),
            private_pem: dir.join(format!("{stem}.pem")),
            public_der: dir.join(format!("{stem}.pub.der")),
            public_pem: dir.join(format!("{stem}.pub.pem")),
        }
    }

    fn all(&self) -> [&PathBuf; 4] {
        [
            &self.private_der,
            &self.private_pem,
            &self.public_der,
            &self.public_pem,
        ]
    }

    /// Writes the key pair; refuses (before writing anything) if a file exists and `overwrite`
    /// is false. Private key files are readable by the owner only (on Unix).
    fn write(&self, key: &SigningKey, overwrite: bool) -> Result<(), KeyError> {
        if !overwrite {
            if let Some(path) = self.all().into_iter().find(|p| p.exists()) {
                return Err(KeyError::Exists { path: path.clone() });
            }
        }
        let public = key.verifying_key();
        write_file(&self.private_der, &private_key_der(key), true, overwrite)?;
        write_file(
            &self.private_pem,
            private_key_pem(key).as_bytes(),
            true,
            overwrite,
        )?;
        write_file(&self.public_der, &public_key_der(public), false, overwrite)?;
        write_file(
            &self.public_pem,
            public_key_pem(public).as_bytes(),
            false,
            overwrite,
        )?;
        Ok(())
    }
}

fn write_file(path: &Path, data: &[u8], private: bool, overwrite: bool) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            err(source)
        }
    })?;
    file.write_all(data).map_err(err)?;
    file.sync_all().map_err(err)
}

/// A directory of key files, named as in the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    /// The directory `dir` (nothing is read until asked).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The server's key files.
    pub fn server_files(&self) -> KeyFiles {
        KeyFiles::with_stem(&self.dir, "server")
    }

    /// A device's key files.
    pub fn device_files(&self, id: &DeviceId) -> KeyFiles {
        KeyFiles::with_stem(&self.dir, &format!("device-{id}"))
    }

    /// Writes the server key pair (the directory is created if needed).
    pub fn write_server_key(
        &self,
        key: &SigningKey,
        overwrite: bool,
    ) -> Result<KeyFiles, KeyError> {
        self.create_dir()?;
        let files = self.server_files();
        files.write(key, overwrite)?;
        Ok(files)
    }

    /// Writes a device key pair (the directory is created if needed).
    pub fn write_device_key(
        &self,
        id: &DeviceId,
        key: &SigningKey,
        overwrite: bool,
    ) -> Result<KeyFiles, KeyError> {
        self.create_dir()?;
        let files = self.device_files(id);
        files.write(key, overwrite)?;
        Ok(files)
    }

    fn create_dir(&self) -> Result<(), KeyError> {
        fs::create_dir_all(&self.dir).map_err(|source| KeyError::Write {
            path: self.dir.clone(),
            source,
        })
    }

    /// The server's private key: `server.der`, else `server.pem`.
    pub fn server_key(&self) -> Result<SigningKey, KeyError> {
        let files = self.server_files();
        for path in [&files.private_der, &files.private_pem] {
            if path.exists() {
                return load_signing_key(path);
            }
        }
        Err(self.missing("server private key", "server.der or server.pem"))
    }

    /// The server's public key: `server.pub.der`, `server.pub.pem`, else derived from the
    /// private key.
    pub fn server_public_key(&self) -> Result<VerifyingKey, KeyError> {
        let files = self.server_files();
        for path in [&files.public_der, &files.public_pem] {
            if path.exists() {
                return load_verifying_key(path);
            }
        }
        self.server_key().map(|k| *k.verifying_key()).map_err(|_| {
            self.missing(
                "server key",
                "server.pub.der, server.pub.pem, server.der or server.pem",
            )
        })
    }

    /// A device's private key: `device-<id>.der`, `device-<id>.pem`, else `<id>.der` or
    /// `<id>.pem` (`particle keys save`).
    pub fn device_signing_key(&self, id: &DeviceId) -> Result<SigningKey, KeyError> {
        for name in [
            format!("device-{id}.der"),
            format!("device-{id}.pem"),
            format!("{id}.der"),
            format!("{id}.pem"),
        ] {
            let path = self.dir.join(name);
            if path.exists() {
                return load_signing_key(path);
            }
        }
        Err(self.missing(
            "device private key",
            format!("device-{id}.der or device-{id}.pem"),
        ))
    }

    /// Every device id with a key file here, sorted.
    pub fn device_ids(&self) -> Result<Vec<DeviceId>, KeyError> {
        let mut ids: Vec<DeviceId> = self
            .device_files_by_id()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.dedup();
        Ok(ids)
    }

    /// Every device public key here, sorted by id: what the cloud registers. Each id's files
    /// (public or private, this crate's names or `particle keys save`'s) must agree.
    pub fn device_keys(&self) -> Result<Vec<([u8; DEVICE_ID_LEN], VerifyingKey)>, KeyError> {
        let mut keys: Vec<([u8; DEVICE_ID_LEN], VerifyingKey)> = Vec::new();
        let mut first_file: Option<PathBuf> = None;
        for (id, path) in self.device_files_by_id()? {
            let key = load_verifying_key(&path)?;
            match keys.last() {
                Some((last, known)) if *last == id.0 => {
                    if *known != key {
                        return Err(KeyError::Conflict {
                            id,
                            a: first_file.unwrap_or_default(),
                            b: path,
                        });
                    }
                }
                _ => {
                    keys.push((id.0, key));
                    first_file = Some(path);
                }
            }
        }
        Ok(keys)
    }

    /// (id, file) for every recognised device key file, sorted by id then file name.
    fn device_files_by_id(&self) -> Result<Vec<(DeviceId, PathBuf)>, KeyError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| KeyError::Read {
            path: self.dir.clone(),
            source,
        })?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| KeyError::Read {
                path: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = device_id_of_file_name(name) {
                found.push((id, entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }

    fn missing(&self, what: &'static str, expected: impl Into<String>) -> KeyError {
        KeyError::Missing {
            dir: self.dir.clone(),
            what,
            expected: expected.into(),
        }
    }
}

/// The device id in a key file name: `device-<id>.{der,pem,pub.der,pub.pem}` or
/// `<id>.{der,pem,pub.der,pub.pem}`.
fn device_id_of_file_name(name: &str) -> Option<DeviceId> {
    let stem = [".pub.der", ".pub.pem", ".der", ".pem"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))?;
    let hex = stem.strip_prefix("device-").unwrap_or(stem);
    hex.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePrivateKey;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hil-keys-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn key(seed: u64) -> SigningKey {
        generate_key(&mut KeyRng::new(Some(seed)))
    }

    #[test]
    fn device_ids_parse_24_hex_digits_of_either_case_and_nothing_else() {
        let id: DeviceId = "0123456789ABCDEFabcdef01".parse().unwrap();
        assert_eq!(id.to_string(), "0123456789abcdefabcdef01");
        for bad in [
            "",
            "0123",
            "0123456789abcdefabcdef0",
            "0123456789abcdefabcdef012",
            "0123456789abcdefabcdef0g",
            "e0123456789abcdefabcdef0 ",
        ] {
            let err = bad.parse::<DeviceId>().unwrap_err();
            assert!(err.to_string().contains("24 hex digits"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn written_keys_load_back_from_every_file() {
        let dir = tempdir("roundtrip");
        let keys = KeyDir::new(&dir);
        let k = key(1);
        let files = keys.write_server_key(&k, false).unwrap();
        assert_eq!(load_signing_key(&files.private_der).unwrap(), k);
        assert_eq!(load_signing_key(&files.private_pem).unwrap(), k);
        for path in files.all() {
            assert_eq!(
                load_verifying_key(path).unwrap(),
                *k.verifying_key(),
                "{path:?}"
            );
        }
        let spki = fs::read(&files.public_der).unwrap();
        assert_eq!(spki.len(), 91);
        assert_eq!(&spki[..4], &[0x30, 0x59, 0x30, 0x13]);
        let sec1 = fs::read(&files.private_der).unwrap();
        // ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING (32) ... }
        assert_eq!(&sec1[..7], &[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
        assert_eq!(sec1.len(), 121);
        // the curve parameters, which mbed TLS needs
        assert_eq!(
            &sec1[39..51],
            &[0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
        assert_eq!(
            p256::SecretKey::from_sec1_der(&sec1).unwrap(),
            p256::SecretKey::from(&k)
        );
        let pem = fs::read_to_string(&files.private_pem).unwrap();
        assert!(pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"), "{pem}");
        let pem = fs::read_to_string(&files.public_pem).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert_eq!(keys.server_key().unwrap(), k);
        assert_eq!(keys.server_public_key().unwrap(), *k.verifying_key());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn pkcs8_der_and_pem_and_openssl_style_pem_with_parameters_load() {
        let dir = tempdir("pkcs8");
        let k = key(2);
        let secret = p256::SecretKey::from(&k);
        let der = secret.to_pkcs8_der().unwrap();
        fs::write(dir.join("k8.der"), der.as_bytes()).unwrap();
        let pem = secret.to_pkcs8_pem(LineEnding::CRLF).unwrap();
        fs::write(dir.join("k8.pem"), pem.as_bytes()).unwrap();
        let with_params = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            private_key_pem(&k)
        );
        fs::write(dir.join("ecparam.pem"), with_params).unwrap();
        for name in ["k8.der", "k8.pem", "ecparam.pem"] {
            assert_eq!(load_signing_key(dir.join(name)).unwrap(), k, "{name}");
            assert_eq!(
                load_verifying_key(dir.join(name)).unwrap(),
                *k.verifying_key(),
                "{name}"
            );
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn dct_style_padding_is_ignored() {
        let dir = tempdir("padding");
        let k = key(3);
        let mut slot = private_key_der(&k);
        slot.resize(192, 0xff);
        fs::write(dir.join("slot.der"), &slot).unwrap();
        assert_eq!(load_signing_key(dir.join("slot.der")).unwrap(), k);
        // `particle keys server --host`: 320 bytes, the SPKI at 0, an address record at 192.
        let mut image = public_key_der(k.verifying_key());
        image.resize(320, 0xff);
        image[192] = 0;
        fs::write(dir.join("image.der"), &image).unwrap();
        assert_eq!(
            load_verifying_key(dir.join("image.der")).unwrap(),
            *k.verifying_key()
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn garbage_files_are_refused_with_their_path() {
        let dir = tempdir("garbage");
        let cases: [(&str, &[u8]); 5] = [
            ("empty.der", b""),
            ("junk.der", &[0x30, 0x82, 0xff, 0xff, 1, 2, 3]),
            ("text.pem", b"hello"),
            ("cut.pem", b"-----BEGIN PUBLIC KEY-----\nMFkw\n"),
            (
                "cert.pem",
                b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
            ),
        ];
        for (name, bytes) in cases {
            let path = dir.join(name);
            fs::write(&path, bytes).unwrap();
            let e = load_signing_key(&path).unwrap_err();
            assert!(matches!(e, KeyError::NotPrivateKey { .. }), "{name}: {e}");
            assert!(e.to_string().contains(name), "{e}");
            let e = load_verifying_key(&path).unwrap_err();
            assert!(matches!(e, KeyError::NotPublicKey { .. }), "{name}: {e}");
        }
        let e = load_signing_key(dir.join("absent.der")).unwrap_err();
        assert!(matches!(e, KeyError::Read { .. }), "{e}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn device_keys_lists_every_device_sorted_with_particle_cli_names_too() {
        let dir = tempdir("devices");
        let keys = KeyDir::new(&dir);
        let a: DeviceId = "ffffffffffffffffffffff01".parse().unwrap();
        let b: DeviceId = "00000000000000000000000b".parse().unwrap();
        keys.write_device_key(&a, &key(10), false).unwrap();
        keys.write_device_key(&b, &key(11), false).unwrap();
        keys.write_server_key(&key(12), false).unwrap();
        // A board's keys as `particle keys save` leaves them: <id>.der (padded) + <id>.pub.pem.
        let c: DeviceId = "e00fce68aaaaaaaaaaaaaaaa".parse().unwrap();
        let mut der = private_key_der(&key(13));
        der.resize(192, 0xff);
        fs::write(dir.join(format!("{c}.der")), der).unwrap();
        fs::write(
            dir.join(format!("{}.pub.pem", c.to_string().to_uppercase())),
            public_key_pem(key(13).verifying_key()),
        )
        .unwrap();
        fs::write(dir.join("README.txt"), "not a key").unwrap();
        fs::write(dir.join("device-nothex.der"), "ignored").unwrap();
        let listed = keys.device_keys().unwrap();
        let ids: Vec<DeviceId> = listed.iter().map(|(id, _)| DeviceId(*id)).collect();
        assert_eq!(ids, vec![b, c, a]);
        assert_eq!(listed[0].1, *key(11).verifying_key());
        assert_eq!(listed[1].1, *key(13).verifying_key());
        assert_eq!(listed[2].1, *key(10).verifying_key());
        assert_eq!(keys.device_ids().unwrap(), vec![b, c, a]);
        assert_eq!(keys.device_signing_key(&c).unwrap(), key(13));
        assert_eq!(keys.device_signing_key(&a).unwrap(), key(10));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn files_that_disagree_about_a_device_are_a_conflict() {
        let dir = tempdir("conflict");
        let keys = KeyDir::new(&dir);
        let id: DeviceId = "0123456789abcdef01234567".parse().unwrap();
        keys.write_device_key(&id, &key(20), false).unwrap();
        fs::write(
            dir.join(format!("{id}.pub.pem")),
            public_key_pem(key(21).verifying_key()),
        )
        .unwrap();
        let e = keys.device_keys().unwrap_err();
        assert!(
            matches!(e, KeyError::Conflict { id: got, .. } if got == id),
            "{e}"
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn keys_are_not_overwritten_unless_asked() {
        let dir = tempdir("overwrite");
        let keys = KeyDir::new(&dir);
        keys.write_server_key(&key(30), false).unwrap();
        let e = keys.write_server_key(&key(31), false).unwrap_err();
        assert!(matches!(e, KeyError::Exists { .. }), "{e}");
        assert_eq!(keys.server_key().unwrap(), key(30));
        keys.write_server_key(&key(31), true).unwrap();
        assert_eq!(keys.server_key().unwrap(), key(31));
        assert_eq!(keys.server_public_key().unwrap(), *key(31).verifying_key());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn an_empty_directory_names_what_is_missing() {
        let dir = tempdir("empty");
        let keys = KeyDir::new(&dir);
        let e = keys.server_key().unwrap_err();
        assert!(e.to_string().contains("server.der"), "{e}");
        assert!(keys.device_keys().unwrap().is_empty());
        let e = KeyDir::new(dir.join("absent")).device_keys().unwrap_err();
        assert!(matches!(e, KeyError::Read { .. }), "{e}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_seed_gives_the_same_key_every_time() {
        assert_eq!(key(5), key(5));
        assert_ne!(key(5), key(6));
        let a = DeviceId::random(&mut KeyRng::new(Some(5)));
        assert_eq!(a, DeviceId::random(&mut KeyRng::new(Some(5))));
        assert_ne!(
            DeviceId::random(&mut KeyRng::new(None)),
            DeviceId::random(&mut KeyRng::new(None))
        );
    }
}
