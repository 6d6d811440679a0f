//! Asset bundles and asset modules (reference section 6.1 and 6.2), as Particle's tools make
//! them (`createApplicationAndAssetBundle`, `createAssetModule`, `updateModuleAssetDependencies`
//! and `unpackApplicationAndAssetBundle` in binary-version-reader).
//!
//! # The bundle (a zip, deflate level 9)
//! ```text
//! <app>.bin              the application, one ASSET_DEPENDENCY extension per asset
//! assets/<name>          each asset's raw bytes
//! env/env-vars.json      optional (environment variables; read, never written here)
//! ```
//! Exactly one file at the root (the application); other folders are ignored, as Particle's
//! unpacker ignores them.
//!
//! # ASSET_DEPENDENCY in the application (0x0012: hash type 0, length 32, SHA-256 of the raw
//! asset, file name)
//! * nRF52840 (and any platform whose user part does not grow down): in the suffix, before the
//!   existing suffix extensions, followed by END unless the last one is END or PRODUCT_DATA;
//!   the suffix grows and the end address moves (the start stays).
//! * rtl872x user parts (P2, M-SoM, Tracker M: the module's end is fixed and it grows down):
//!   in the prefix (flag PREFIX_EXTENSIONS), after any existing prefix extensions, then an END
//!   padded so the new start address is 8-byte aligned; the start moves down and the suffix's
//!   DYNAMIC_LOCATION follows it.
//!
//! Existing ASSET_DEPENDENCY extensions are replaced. Where binary-version-reader would leave a
//! stale END in the middle of a prefix list it already had (re-bundling a bundled rtl872x app),
//! this code drops the stale END too, so the device reads every dependency.
//!
//! # The asset module (what one asset OTA transfer carries)
//! Prefix: start 0, end = length - 4, function 9, flags DROP_MODULE_INFO [| COMPRESSED],
//! everything else 0. Body: the raw asset. Suffix: HASH (SHA-256 of the raw data), NAME,
//! PRODUCT_DATA (`FF FF FF FF FF FF`), base suffix. Compressed by default (section 4.5: only
//! the body is deflated). [`AssetModule::parse`] makes the checks Device OS's
//! `AssetReader::validate` makes.

use std::io::{Cursor, Read, Write};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::module::{
    compress, decompress, ext_type, Extension, Module, ModuleError, ModuleFlags, ModuleFunction,
    ModuleParts, Prefix, BASE_SUFFIX_LEN, CRC_LEN, PREFIX_LEN,
};

/// The folder of the raw assets inside a bundle.
pub const ASSETS_DIR: &str = "assets";
/// The folder of the environment-variables JSON inside a bundle.
pub const ENV_DIR: &str = "env";
/// Hash type 0 of HASH and ASSET_DEPENDENCY extensions.
pub const HASH_TYPE_SHA256: u8 = 0;
/// Smallest suffix an asset module may have (`AssetReader::validate`).
pub const MIN_ASSET_SUFFIX_LEN: usize = 44;
/// Largest file read out of a bundle (a zip bomb guard; far above any module Device OS takes).
pub const MAX_BUNDLE_ENTRY_LEN: u64 = 16 * 1024 * 1024;
/// Alignment of the start of a module that grows down.
const GROWS_DOWN_ALIGNMENT: u32 = 8;

/// Everything wrong with a bundle or an asset module, named for a person.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BundleError {
    #[error("not a readable zip file: {0}")]
    Zip(String),
    #[error("zip entry {name:?} is larger than {max} bytes (uncompressed)")]
    EntryTooLarge { name: String, max: u64 },
    #[error("the bundle has no application binary at its root")]
    NoApplication,
    #[error("the bundle has two files at its root ({first:?} and {second:?}); it must hold exactly one application")]
    SeveralApplications { first: String, second: String },
    #[error("the bundle holds two assets named {0:?}")]
    DuplicateAsset(String),
    #[error("asset name {name:?} is not usable: {reason}")]
    BadAssetName { name: String, reason: &'static str },
    #[error("{what}: {source}")]
    Module {
        what: String,
        #[source]
        source: ModuleError,
    },
    #[error("the application ({name}) is a {function} module, not a user part")]
    NotAnApplication { name: String, function: String },
    #[error("the application needs asset {name:?} but the bundle does not hold it")]
    MissingAsset { name: String },
    #[error(
        "asset {name:?}: its SHA-256 {actual} does not match the application's dependency {expected}"
    )]
    HashMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("asset {name:?} is in the bundle but the application does not depend on it")]
    UndeclaredAsset { name: String },
    #[error("the application with its asset dependencies is {len} bytes, more than the {max}-byte user part of platform {platform_id}")]
    AppTooLarge {
        len: usize,
        max: usize,
        platform_id: u16,
    },
    #[error("not a valid asset module: {0}")]
    AssetModule(String),
}

fn module_err(what: impl Into<String>) -> impl FnOnce(ModuleError) -> BundleError {
    let what = what.into();
    move |source| BundleError::Module { what, source }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One asset: its file name and raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    pub name: String,
    pub data: Vec<u8>,
}

impl Asset {
    pub fn new(name: impl Into<String>, data: impl Into<Vec<u8>>) -> Asset {
        Asset {
            name: name.into(),
            data: data.into(),
        }
    }

    /// SHA-256 of the raw data: what the application's dependency and the module's HASH carry.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.data).into()
    }

    /// The asset module for an OTA transfer ([`asset_module`]).
    pub fn module(&self, compressed: bool) -> Result<Vec<u8>, BundleError> {
        asset_module(&self.name, &self.data, compressed)
    }
}

/// One ASSET_DEPENDENCY of an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetDependency {
    pub name: String,
    pub hash_type: u8,
    pub hash: Vec<u8>,
}

fn check_name(name: &str) -> Result<(), BundleError> {
    let bad = |reason| {
        Err(BundleError::BadAssetName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.contains('/') || name.contains('\\') {
        return bad("it contains a path separator");
    }
    if name.len() > 255 {
        return bad("it is longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return bad("it is not a file name");
    }
    Ok(())
}

/// Whether `platform_id`'s user part grows down (its end is fixed): the rtl872x platforms
/// (Tracker M 28, P2 / Photon 2 32, M-SoM 35).
pub fn user_part_grows_down(platform_id: u16) -> bool {
    matches!(platform_id, 28 | 32 | 35)
}

/// Largest user part of `platform_id` (what Particle's tools check the bundled app against):
/// 1.5 MiB on rtl872x, 256 KiB on nRF52840.
pub fn max_user_part_len(platform_id: u16) -> usize {
    if user_part_grows_down(platform_id) {
        0x18_0000
    } else {
        0x4_0000
    }
}

/// The ASSET_DEPENDENCY extensions of a module (prefix and suffix), in file order.
pub fn asset_dependencies(module: &[u8]) -> Result<Vec<AssetDependency>, ModuleError> {
    let m = Module::parse(module)?;
    Ok(dependencies_of(&m))
}

/// The ASSET_DEPENDENCY extensions of a parsed module.
pub fn dependencies_of(m: &Module) -> Vec<AssetDependency> {
    m.prefix_extensions
        .iter()
        .chain(m.suffix.extensions.iter())
        .filter_map(|e| match e {
            Extension::AssetDependency {
                hash_type,
                hash,
                name,
            } => Some(AssetDependency {
                name: name.clone(),
                hash_type: *hash_type,
                hash: hash.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// `updateModuleAssetDependencies`: the application with one ASSET_DEPENDENCY per asset
/// (replacing any it had), placed as the platform needs (module docs), SHA-256 and CRC-32
/// recomputed.
pub fn add_asset_dependencies(app: &[u8], assets: &[Asset]) -> Result<Vec<u8>, BundleError> {
    let module = Module::parse(app).map_err(module_err("the application is not a module"))?;
    let p = module.prefix;
    if p.flags.contains(ModuleFlags::COMPRESSED) {
        return Err(BundleError::Module {
            what: "the application".into(),
            source: ModuleError::AlreadyCompressed,
        });
    }
    if p.flags.contains(ModuleFlags::COMBINED) {
        return Err(BundleError::Module {
            what: "the application".into(),
            source: ModuleError::UnexpectedCombined {
                offset: module.prefix_offset,
            },
        });
    }
    let new: Vec<Extension> = assets
        .iter()
        .map(|a| Extension::AssetDependency {
            hash_type: HASH_TYPE_SHA256,
            hash: a.sha256().to_vec(),
            name: a.name.clone(),
        })
        .collect();
    let mut parts = ModuleParts::from_module(&module, app);
    let in_prefix = p.flags.contains(ModuleFlags::PREFIX_EXTENSIONS)
        || (p.function == ModuleFunction::UserPart && user_part_grows_down(p.platform_id));
    let out = if in_prefix {
        if module.prefix_offset != 0 {
            return Err(BundleError::Module {
                what: "the application".into(),
                source: ModuleError::InvalidBuild {
                    reason: "prefix extensions need the prefix at offset 0",
                },
            });
        }
        let mut list: Vec<Extension> = parts
            .prefix_extensions
            .drain(..)
            .filter(|e| e.ty() != ext_type::ASSET_DEPENDENCY && !e.is_end())
            .collect();
        list.extend(new);
        let end = p.end_address;
        let without_end = app.len() - module.prefix_extensions_range().len()
            + list.iter().map(Extension::len).sum::<usize>();
        let unpadded = without_end + Extension::END.len();
        let start = end
            .checked_sub((unpadded - CRC_LEN) as u32)
            .ok_or_else(|| BundleError::AppTooLarge {
                len: unpadded,
                max: max_user_part_len(p.platform_id),
                platform_id: p.platform_id,
            })?;
        let padding = start % GROWS_DOWN_ALIGNMENT;
        list.push(Extension::End {
            len: (Extension::END.len() as u32 + padding) as u16,
        });
        parts.prefix_extensions = list;
        parts.prefix.flags.insert(ModuleFlags::PREFIX_EXTENSIONS);
        let len = parts.file_len();
        parts.prefix.start_address = end - (len - CRC_LEN) as u32;
        for e in parts.suffix.extensions.iter_mut() {
            if let Extension::DynamicLocation { module_start, .. } = e {
                *module_start = parts.prefix.start_address;
            }
        }
        // Keep the end fixed: `build` recomputes it from the start and the length.
        parts
            .build()
            .map_err(module_err("adding asset dependencies"))?
    } else {
        let old: Vec<Extension> = parts
            .suffix
            .extensions
            .drain(..)
            .filter(|e| e.ty() != ext_type::ASSET_DEPENDENCY)
            .collect();
        let mut list = new;
        list.extend(old);
        if list
            .last()
            .is_some_and(|e| !e.is_end() && e.ty() != ext_type::PRODUCT_DATA)
        {
            list.push(Extension::END);
        }
        parts.suffix.extensions = list;
        parts
            .build()
            .map_err(module_err("adding asset dependencies"))?
    };
    let max = max_user_part_len(p.platform_id);
    if p.function == ModuleFunction::UserPart && out.len() > max {
        return Err(BundleError::AppTooLarge {
            len: out.len(),
            max,
            platform_id: p.platform_id,
        });
    }
    Ok(out)
}

/// `createAssetModule`: the module one asset OTA transfer carries (module docs), compressed
/// when `compressed` (Particle's default).
pub fn asset_module(name: &str, data: &[u8], compressed: bool) -> Result<Vec<u8>, BundleError> {
    check_name(name)?;
    let hash: [u8; 32] = Sha256::digest(data).into();
    let suffix = crate::module::Suffix {
        extensions: vec![
            Extension::Hash {
                hash_type: HASH_TYPE_SHA256,
                hash: hash.to_vec(),
            },
            Extension::Name(name.to_string()),
            Extension::product_data(0xffff, 0xffff),
        ],
        product_data: None,
        reserved: 0,
        sha256: [0; 32],
    };
    let parts = ModuleParts {
        head: Vec::new(),
        prefix: Prefix {
            start_address: 0,
            end_address: 0,
            mcu_target: 0,
            flags: ModuleFlags::DROP_MODULE_INFO,
            version: 0,
            platform_id: 0,
            function: ModuleFunction::Asset,
            index: 0,
            dependencies: Default::default(),
        },
        prefix_extensions: Vec::new(),
        compressed_header: None,
        body: data.to_vec(),
        suffix,
    };
    let plain = parts
        .build()
        .map_err(module_err(format!("building asset module {name:?}")))?;
    if compressed {
        compress(&plain).map_err(module_err(format!("compressing asset {name:?}")))
    } else {
        Ok(plain)
    }
}

/// A valid asset module, as Device OS's `AssetReader::validate` accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetModule {
    pub name: String,
    /// SHA-256 of the raw asset (the HASH extension).
    pub hash: Vec<u8>,
    /// Size of the raw asset.
    pub original_size: u32,
    pub compressed: bool,
    /// Size of the module file (what asset storage holds).
    pub storage_size: u32,
}

impl AssetModule {
    /// `AssetReader::validate`: function 9, DROP_MODULE_INFO, no PREFIX_EXTENSIONS, size ==
    /// end - start + 4, CRC-32, suffix >= 44 bytes, NAME and HASH present, compression method 0.
    pub fn parse(module: &[u8]) -> Result<AssetModule, BundleError> {
        let bad = |s: String| BundleError::AssetModule(s);
        let m = Module::parse(module).map_err(|e| bad(e.to_string()))?;
        let p = m.prefix;
        if p.function != ModuleFunction::Asset {
            return Err(bad(format!(
                "module function {} is not 9 (asset)",
                u8::from(p.function)
            )));
        }
        if !p.flags.contains(ModuleFlags::DROP_MODULE_INFO) {
            return Err(bad("DROP_MODULE_INFO is not set".into()));
        }
        if p.flags.contains(ModuleFlags::PREFIX_EXTENSIONS) {
            return Err(bad("PREFIX_EXTENSIONS is set".into()));
        }
        if m.prefix_offset != 0 {
            return Err(bad(format!("prefix at offset {}", m.prefix_offset)));
        }
        m.verify_crc().map_err(|e| bad(e.to_string()))?;
        if m.suffix_size() < MIN_ASSET_SUFFIX_LEN {
            return Err(bad(format!(
                "suffix of {} bytes, fewer than {MIN_ASSET_SUFFIX_LEN}",
                m.suffix_size()
            )));
        }
        let mut name = None;
        let mut hash = None;
        for e in &m.suffix.extensions {
            match e {
                Extension::Name(n) => name = Some(n.clone()),
                Extension::Hash { hash: h, .. } => hash = Some(h.clone()),
                _ => {}
            }
        }
        let name = name.ok_or_else(|| bad("no NAME extension".into()))?;
        let hash = hash.ok_or_else(|| bad("no HASH extension".into()))?;
        let (compressed, original_size) = match m.compressed_header {
            Some(h) => {
                if h.method != crate::module::METHOD_RAW_DEFLATE {
                    return Err(bad(format!("compression method {} is not 0", h.method)));
                }
                (true, h.original_size)
            }
            None => (false, m.body.len() as u32),
        };
        Ok(AssetModule {
            name,
            hash,
            original_size,
            compressed,
            storage_size: module.len() as u32,
        })
    }

    /// Whether `module` (the bytes [`AssetModule::parse`] read) holds data whose SHA-256 is its
    /// HASH: inflates a compressed module. Device OS checks this when the application reads
    /// the asset, not at OTA time.
    pub fn data_matches(&self, module: &[u8]) -> bool {
        unwrap_asset_module(module).is_ok_and(|d| Sha256::digest(&d).as_slice() == self.hash)
    }
}

/// `unwrapAssetModule`: the raw asset data of an asset module.
pub fn unwrap_asset_module(module: &[u8]) -> Result<Vec<u8>, BundleError> {
    let m = Module::parse(module).map_err(|e| BundleError::AssetModule(e.to_string()))?;
    if m.prefix.function != ModuleFunction::Asset {
        return Err(BundleError::AssetModule("not an asset module".into()));
    }
    if m.compressed_header.is_some() {
        decompress(module).map_err(|e| BundleError::AssetModule(e.to_string()))
    } else {
        Ok(module.get(m.body.clone()).unwrap_or_default().to_vec())
    }
}

/// True if `bytes` start like a zip file (local file header or empty archive).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// An application and asset bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// File name of the application at the zip's root.
    pub app_name: String,
    /// The application, with its ASSET_DEPENDENCY extensions.
    pub app: Vec<u8>,
    /// The raw assets, in zip order.
    pub assets: Vec<Asset>,
    /// `env/<name>` and its JSON text, if the bundle has one.
    pub env_vars: Option<(String, String)>,
}

impl Bundle {
    /// `createApplicationAndAssetBundle` without environment variables: the application gets
    /// one dependency per asset (in the order given).
    pub fn create(app_name: &str, app: &[u8], assets: Vec<Asset>) -> Result<Bundle, BundleError> {
        check_name(app_name)?;
        let mut seen = std::collections::BTreeSet::new();
        for a in &assets {
            check_name(&a.name)?;
            if !seen.insert(a.name.clone()) {
                return Err(BundleError::DuplicateAsset(a.name.clone()));
            }
        }
        let module = Module::parse(app).map_err(module_err(format!(
            "the application {app_name} is not a module"
        )))?;
        if module.prefix.function != ModuleFunction::UserPart {
            return Err(BundleError::NotAnApplication {
                name: app_name.into(),
                function: module.prefix.function.to_string(),
            });
        }
        let app = if assets.is_empty() {
            app.to_vec()
        } else {
            add_asset_dependencies(app, &assets)?
        };
        Ok(Bundle {
            app_name: app_name.into(),
            app,
            assets,
            env_vars: None,
        })
    }

    /// `unpackApplicationAndAssetBundle` plus [`Bundle::check`]: the zip's root file is the
    /// application, `assets/*` the assets, `env/*` the environment variables.
    pub fn read(zip: &[u8]) -> Result<Bundle, BundleError> {
        let bundle = Bundle::unpack(zip)?;
        bundle.check()?;
        Ok(bundle)
    }

    /// Reads the zip without checking the application against the assets.
    pub fn unpack(zip: &[u8]) -> Result<Bundle, BundleError> {
        let zerr = |e: zip::result::ZipError| BundleError::Zip(e.to_string());
        let mut archive = zip::ZipArchive::new(Cursor::new(zip)).map_err(zerr)?;
        let mut app: Option<(String, Vec<u8>)> = None;
        let mut assets: Vec<Asset> = Vec::new();
        let mut env_vars = None;
        for i in 0..archive.len() {
            let mut entry = archive.by_index(i).map_err(zerr)?;
            if entry.is_dir() {
                continue;
            }
            let path = entry.name().to_string();
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (d.to_string(), b.to_string()),
                None => (String::new(), path.clone()),
            };
            if !(dir.is_empty() || dir == ASSETS_DIR || dir == ENV_DIR) {
                continue;
            }
            if entry.size() > MAX_BUNDLE_ENTRY_LEN {
                return Err(BundleError::EntryTooLarge {
                    name: path,
                    max: MAX_BUNDLE_ENTRY_LEN,
                });
            }
            let mut data = Vec::with_capacity(entry.size() as usize);
            (&mut entry)
                .take(MAX_BUNDLE_ENTRY_LEN + 1)
                .read_to_end(&mut data)
                .map_err(|e| BundleError::Zip(format!("reading {path:?}: {e}")))?;
            if data.len() as u64 > MAX_BUNDLE_ENTRY_LEN {
                return Err(BundleError::EntryTooLarge {
                    name: path,
                    max: MAX_BUNDLE_ENTRY_LEN,
                });
            }
            if dir.is_empty() {
                if let Some((first, _)) = &app {
                    return Err(BundleError::SeveralApplications {
                        first: first.clone(),
                        second: path,
                    });
                }
                app = Some((path, data));
            } else if dir == ASSETS_DIR {
                check_name(&base)?;
                if assets.iter().any(|a| a.name == base) {
                    return Err(BundleError::DuplicateAsset(base));
                }
                assets.push(Asset::new(base, data));
            } else {
                let text = String::from_utf8(data)
                    .map_err(|_| BundleError::Zip(format!("{path:?} is not UTF-8 text")))?;
                env_vars = Some((path, text));
            }
        }
        let (app_name, app) = app.ok_or(BundleError::NoApplication)?;
        Ok(Bundle {
            app_name,
            app,
            assets,
            env_vars,
        })
    }

    /// The application is a valid user part, every dependency it names is in the bundle with
    /// the same SHA-256, and every asset is depended on.
    pub fn check(&self) -> Result<(), BundleError> {
        let module = Module::parse(&self.app).map_err(module_err(format!(
            "the application {} is not a module",
            self.app_name
        )))?;
        module
            .verify_crc()
            .map_err(module_err(format!("the application {}", self.app_name)))?;
        if module.prefix.function != ModuleFunction::UserPart {
            return Err(BundleError::NotAnApplication {
                name: self.app_name.clone(),
                function: module.prefix.function.to_string(),
            });
        }
        let deps = dependencies_of(&module);
        for d in &deps {
            let asset = self
                .assets
                .iter()
                .find(|a| a.name == d.name)
                .ok_or_else(|| BundleError::MissingAsset {
                    name: d.name.clone(),
                })?;
            let actual = asset.sha256();
            if d.hash.as_slice() != actual {
                return Err(BundleError::HashMismatch {
                    name: d.name.clone(),
                    expected: hex(&d.hash),
                    actual: hex(&actual),
                });
            }
        }
        if let Some(a) = self
            .assets
            .iter()
            .find(|a| !deps.iter().any(|d| d.name == a.name))
        {
            return Err(BundleError::UndeclaredAsset {
                name: a.name.clone(),
            });
        }
        Ok(())
    }

    /// The application's asset dependencies.
    pub fn dependencies(&self) -> Vec<AssetDependency> {
        asset_dependencies(&self.app).unwrap_or_default()
    }

    /// The zip Particle's tools write: deflate level 9, the application, then `assets/<name>`,
    /// then the environment variables. Timestamps are the zip epoch (1980-01-01), so the same
    /// bundle always gives the same bytes.
    pub fn to_zip(&self) -> Result<Vec<u8>, BundleError> {
        let zerr = |e: zip::result::ZipError| BundleError::Zip(e.to_string());
        let ioerr = |e: std::io::Error| BundleError::Zip(e.to_string());
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(9));
        w.start_file(self.app_name.as_str(), options)
            .map_err(zerr)?;
        w.write_all(&self.app).map_err(ioerr)?;
        for a in &self.assets {
            w.start_file(format!("{ASSETS_DIR}/{}", a.name), options)
                .map_err(zerr)?;
            w.write_all(&a.data).map_err(ioerr)?;
        }
        if let Some((name, text)) = &self.env_vars {
            w.start_file(name.as_str(), options).map_err(zerr)?;
            w.write_all(text.as_bytes()).map_err(ioerr)?;
        }
        Ok(w.finish().map_err(zerr)?.into_inner())
    }

    /// Each asset as the module its OTA transfer carries (compressed), in bundle order.
    pub fn asset_modules(&self) -> Result<Vec<(String, Vec<u8>)>, BundleError> {
        self.assets
            .iter()
            .map(|a| Ok((a.name.clone(), a.module(true)?)))
            .collect()
    }
}

/// Bytes of suffix an asset module built here has: HASH (38), NAME, PRODUCT_DATA (10), base.
pub fn asset_suffix_len(name: &str) -> usize {
    38 + 4 + name.len() + 10 + BASE_SUFFIX_LEN
}

/// Size of an uncompressed asset module for `data_len` bytes of asset named `name`.
pub fn plain_asset_module_len(name: &str, data_len: usize) -> usize {
    PREFIX_LEN + data_len + asset_suffix_len(name) + CRC_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::{ModuleBuilder, SuffixStyle};

    fn boron_app() -> Vec<u8> {
        ModuleBuilder::new(ModuleFunction::UserPart, 13)
            .index(2)
            .version(6)
            .start_address(0xB4000)
            .product(13, 4)
            .suffix_style(SuffixStyle::Nrf52840)
            .body(vec![0x5a; 1000])
            .build()
            .unwrap()
    }

    fn p2_app() -> Vec<u8> {
        ModuleBuilder::new(ModuleFunction::UserPart, 32)
            .index(1)
            .version(6)
            .fixed_end(0x0860_0000)
            .product(32, 4)
            .suffix_style(SuffixStyle::Rtl872x)
            .dynamic_location(0x0800_0000, 0x0800_0100)
            .body(vec![0x5a; 1001])
            .build()
            .unwrap()
    }

    fn assets() -> Vec<Asset> {
        vec![
            Asset::new("logo.bmp", vec![7u8; 3000]),
            Asset::new(
                "sound.wav",
                (0..2000u32).map(|i| i as u8).collect::<Vec<_>>(),
            ),
        ]
    }

    #[test]
    fn nrf52840_dependencies_go_in_the_suffix_and_the_start_stays() {
        let app = boron_app();
        let out = add_asset_dependencies(&app, &assets()).unwrap();
        let m = Module::parse(&out).unwrap();
        assert!(m.crc_valid());
        assert_eq!(m.prefix.start_address, 0xB4000);
        assert!(!m.prefix.flags.contains(ModuleFlags::PREFIX_EXTENSIONS));
        assert_eq!(m.product_version(), Some(4));
        let deps = dependencies_of(&m);
        assert_eq!(deps.len(), 2);
        assert_eq!(deps[0].name, "logo.bmp");
        assert_eq!(deps[0].hash, assets()[0].sha256().to_vec());
        assert!(m.suffix.extensions.last().unwrap().is_end());
        // ASSET_DEPENDENCY 6 + 32 + name (46, 47), END 4, raw product data 4, base 36.
        assert_eq!(m.suffix_size(), 46 + 47 + 4 + 4 + 36);
    }

    #[test]
    fn rtl872x_dependencies_go_in_the_prefix_and_the_end_stays() {
        let app = p2_app();
        let before = Module::parse(&app).unwrap();
        let out = add_asset_dependencies(&app, &assets()).unwrap();
        let m = Module::parse(&out).unwrap();
        assert!(m.crc_valid());
        assert_eq!(m.prefix.end_address, before.prefix.end_address);
        assert_eq!(m.prefix.start_address % 8, 0);
        assert!(m.prefix.flags.contains(ModuleFlags::PREFIX_EXTENSIONS));
        assert_eq!(dependencies_of(&m).len(), 2);
        assert_eq!(out.get(m.body.clone()), app.get(before.body.clone()));
        let dl = m.suffix.extensions.iter().find_map(|e| match e {
            Extension::DynamicLocation { module_start, .. } => Some(*module_start),
            _ => None,
        });
        assert_eq!(dl, Some(m.prefix.start_address));
        // Adding again replaces, not appends.
        let again = add_asset_dependencies(&out, &assets()[..1]).unwrap();
        assert_eq!(asset_dependencies(&again).unwrap().len(), 1);
    }

    #[test]
    fn asset_module_round_trips_compressed_and_plain() {
        for compressed in [true, false] {
            let a = &assets()[1];
            let module = a.module(compressed).unwrap();
            let info = AssetModule::parse(&module).unwrap();
            assert_eq!(info.name, "sound.wav");
            assert_eq!(info.hash, a.sha256().to_vec());
            assert_eq!(info.original_size, 2000);
            assert_eq!(info.compressed, compressed);
            assert!(info.data_matches(&module));
            assert_eq!(unwrap_asset_module(&module).unwrap(), a.data);
        }
        let plain = assets()[0].module(false).unwrap();
        assert_eq!(plain.len(), plain_asset_module_len("logo.bmp", 3000));
    }

    #[test]
    fn asset_module_checks_refuse_what_device_os_refuses() {
        let mut module = assets()[0].module(true).unwrap();
        let n = module.len();
        module[n - 1] ^= 1;
        assert!(AssetModule::parse(&module)
            .unwrap_err()
            .to_string()
            .contains("CRC"));
        assert!(AssetModule::parse(&boron_app())
            .unwrap_err()
            .to_string()
            .contains("function 5"));
    }

    #[test]
    fn bundle_round_trips_through_zip() {
        let b = Bundle::create("firmware.bin", &boron_app(), assets()).unwrap();
        let zip = b.to_zip().unwrap();
        assert!(is_zip(&zip));
        assert_eq!(zip, b.to_zip().unwrap(), "deterministic");
        let back = Bundle::read(&zip).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn a_bundle_whose_asset_does_not_match_its_dependency_is_refused() {
        let mut b = Bundle::create("firmware.bin", &boron_app(), assets()).unwrap();
        b.assets[0].data[0] ^= 1;
        let zip = b.to_zip().unwrap();
        match Bundle::read(&zip) {
            Err(BundleError::HashMismatch { name, .. }) => assert_eq!(name, "logo.bmp"),
            other => panic!("{other:?}"),
        }
        b.assets.remove(0);
        assert!(matches!(
            Bundle::read(&b.to_zip().unwrap()),
            Err(BundleError::MissingAsset { .. })
        ));
    }

    #[test]
    fn broken_zips_are_errors_not_panics() {
        let zip = Bundle::create("firmware.bin", &boron_app(), assets())
            .unwrap()
            .to_zip()
            .unwrap();
        for cut in [0, 4, 30, zip.len() / 2, zip.len() - 1] {
            assert!(Bundle::read(&zip[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = zip.clone();
        let mid = flipped.len() / 3;
        flipped[mid] ^= 0xff;
        let _ = Bundle::read(&flipped);
    }
}
