//! Building module files (reference sections 4.1-4.4): [`ModuleBuilder`] makes modules the
//! way Particle's build and tools lay them out, [`ModuleParts`] puts parsed parts back together.

use super::compressed::{end_address, CompressedHeader};
use super::error::{ModuleError, Result};
use super::extension::{self, Extension};
use super::prefix::{Dependency, ModuleFlags, ModuleFunction, Prefix, PREFIX_LEN};
use super::suffix::{ProductData, Suffix};
use super::{update_checksums, Module, CRC_LEN};

/// Alignment of the start address of a module that grows down (Particle's tools use 8).
pub const GROWS_DOWN_START_ALIGNMENT: u32 = 8;

/// Every part of a module file, owned. [`ModuleParts::emit`] writes them verbatim,
/// [`ModuleParts::build`] also fixes the end address, SHA-256 and CRC-32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleParts {
    /// Bytes before the prefix (vector table / image header).
    pub head: Vec<u8>,
    /// The prefix.
    pub prefix: Prefix,
    /// Prefix extensions (flag PREFIX_EXTENSIONS), ending with END.
    pub prefix_extensions: Vec<Extension>,
    /// The compressed header of a COMPRESSED module.
    pub compressed_header: Option<CompressedHeader>,
    /// The body (the deflate stream of a compressed module).
    pub body: Vec<u8>,
    /// The suffix area.
    pub suffix: Suffix,
}

impl ModuleParts {
    /// Copies the parts of a parsed module out of its file.
    pub fn from_module(module: &Module, file: &[u8]) -> ModuleParts {
        ModuleParts {
            head: file.get(module.head_range()).unwrap_or(&[]).to_vec(),
            prefix: module.prefix,
            prefix_extensions: module.prefix_extensions.clone(),
            compressed_header: module.compressed_header,
            body: file.get(module.body.clone()).unwrap_or(&[]).to_vec(),
            suffix: module.suffix.clone(),
        }
    }

    /// Parses `file` and copies its parts.
    pub fn parse(file: &[u8]) -> Result<ModuleParts> {
        Ok(ModuleParts::from_module(&Module::parse(file)?, file))
    }

    /// Length of the file these parts make.
    pub fn file_len(&self) -> usize {
        self.head.len()
            + PREFIX_LEN
            + extension::list_len(&self.prefix_extensions)
            + self
                .compressed_header
                .map_or(0, |_| super::COMPRESSED_HEADER_LEN)
            + self.body.len()
            + self.suffix.size()
            + CRC_LEN
    }

    /// Writes every part exactly as given (including the prefix's end address and the
    /// suffix's SHA-256) followed by `crc` big-endian.
    pub fn emit(&self, crc: u32) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.file_len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.prefix.to_bytes());
        extension::emit_list(&self.prefix_extensions, &mut out)?;
        if let Some(h) = self.compressed_header {
            out.extend_from_slice(&h.to_bytes());
        }
        out.extend_from_slice(&self.body);
        self.suffix.emit(&mut out)?;
        out.extend_from_slice(&crc.to_be_bytes());
        Ok(out)
    }

    /// Writes the parts with the end address set to `start + len - 4`, then the SHA-256 and
    /// CRC-32 computed.
    pub fn build(&self) -> Result<Vec<u8>> {
        let mut parts = self.clone();
        parts.prefix.end_address = end_address(parts.prefix.start_address, self.file_len())?;
        let mut out = parts.emit(0)?;
        update_checksums(&mut out)?;
        Ok(out)
    }
}

/// How the suffix is laid out; the MCU family decides (reference section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SuffixStyle {
    /// nRF52840 (platforms 12, 13, 15, 22, 23, 25, 26): `FF FF` filler at the end of the body,
    /// then suffix extensions (ending with END) if any, raw product id / version, base suffix;
    /// size 40 without extensions.
    Nrf52840,
    /// rtl872x (platforms 28, 32, 35): suffix extensions if any, DYNAMIC_LOCATION, PRODUCT_DATA,
    /// base suffix; size 62 without extra extensions.
    Rtl872x,
    /// No product data (radio stack, NCP, assets): suffix extensions (ending with END unless the
    /// last is END or PRODUCT_DATA) and the base suffix; size 36 without extensions.
    Plain,
}

/// Builds a module file the way Particle's build and tools do: correct end address, the
/// suffix of the chosen [`SuffixStyle`], SHA-256 and CRC-32.
///
/// ```
/// use protocol::module::{Dependency, Module, ModuleBuilder, ModuleFunction, SuffixStyle};
/// let bytes = ModuleBuilder::new(ModuleFunction::UserPart, 26)
///     .index(2)
///     .version(6)
///     .start_address(0xB4000)
///     .dependency(Dependency { function: ModuleFunction::SystemPart, index: 1, version: 6200 })
///     .product(26, 4)
///     .suffix_style(SuffixStyle::Nrf52840)
///     .body_len(4096)
///     .build()
///     .unwrap();
/// let module = Module::parse(&bytes).unwrap();
/// assert!(module.crc_valid());
/// assert_eq!(module.product_version(), Some(4));
/// ```
#[derive(Debug, Clone)]
pub struct ModuleBuilder {
    function: ModuleFunction,
    platform_id: u16,
    index: u8,
    version: u16,
    mcu_target: u8,
    start_address: u32,
    fixed_end: Option<u32>,
    dependencies: Vec<Dependency>,
    flags: ModuleFlags,
    product: Option<ProductData>,
    body: Vec<u8>,
    head: Vec<u8>,
    prefix_extensions: Vec<Extension>,
    suffix_extensions: Vec<Extension>,
    style: SuffixStyle,
    dynamic_location: Option<(u32, u32)>,
}

impl ModuleBuilder {
    /// A module of `function` for `platform_id`: index 0, version 0, start address 0, no
    /// dependencies, empty body, [`SuffixStyle::Nrf52840`] until set otherwise.
    pub fn new(function: ModuleFunction, platform_id: u16) -> ModuleBuilder {
        ModuleBuilder {
            function,
            platform_id,
            index: 0,
            version: 0,
            mcu_target: 0,
            start_address: 0,
            fixed_end: None,
            dependencies: Vec::new(),
            flags: ModuleFlags::NONE,
            product: None,
            body: Vec::new(),
            head: Vec::new(),
            prefix_extensions: Vec::new(),
            suffix_extensions: Vec::new(),
            style: SuffixStyle::Nrf52840,
            dynamic_location: None,
        }
    }

    /// Module index.
    pub fn index(mut self, index: u8) -> Self {
        self.index = index;
        self
    }

    /// Module version.
    pub fn version(mut self, version: u16) -> Self {
        self.version = version;
        self
    }

    /// Reserved / MCU target byte (0x21 for ESP32 NCP firmware).
    pub fn mcu_target(mut self, mcu_target: u8) -> Self {
        self.mcu_target = mcu_target;
        self
    }

    /// Address of the first byte of the file; the end address follows from the length.
    pub fn start_address(mut self, start: u32) -> Self {
        self.start_address = start;
        self.fixed_end = None;
        self
    }

    /// The module grows down so that `end_address + 4 == end` (rtl872x user parts); the start
    /// address follows from the length and, with prefix extensions, is aligned down to 8 by
    /// padding the END extension.
    pub fn fixed_end(mut self, end: u32) -> Self {
        self.fixed_end = Some(end);
        self
    }

    /// Adds a dependency (at most two).
    pub fn dependency(mut self, dependency: Dependency) -> Self {
        self.dependencies.push(dependency);
        self
    }

    /// Extra flags (DROP_MODULE_INFO, ENCRYPTED...). PREFIX_EXTENSIONS is set by
    /// [`ModuleBuilder::prefix_extension`]; COMPRESSED and COMBINED come from
    /// [`super::compress`] and [`super::combine`].
    pub fn flags(mut self, flags: ModuleFlags) -> Self {
        self.flags = flags;
        self
    }

    /// Product id and product firmware version (default 0xFFFF / 0xFFFF where the style has
    /// product data).
    pub fn product(mut self, id: u16, version: u16) -> Self {
        self.product = Some(ProductData { id, version });
        self
    }

    /// The body bytes.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A deterministic body of `len` bytes.
    pub fn body_len(mut self, len: usize) -> Self {
        self.body = filler(len);
        self
    }

    /// Puts `len` bytes of 0xFF (an erased vector table) before the prefix.
    pub fn vector_table(mut self, len: usize) -> Self {
        self.head = vec![0xff; len];
        self
    }

    /// Puts these bytes before the prefix (a real vector table or image header).
    pub fn head(mut self, head: impl Into<Vec<u8>>) -> Self {
        self.head = head.into();
        self
    }

    /// Adds a prefix extension (sets PREFIX_EXTENSIONS; END is appended when missing).
    pub fn prefix_extension(mut self, ext: Extension) -> Self {
        self.prefix_extensions.push(ext);
        self
    }

    /// Adds a suffix extension, placed before the product data of the style.
    pub fn suffix_extension(mut self, ext: Extension) -> Self {
        self.suffix_extensions.push(ext);
        self
    }

    /// The suffix layout.
    pub fn suffix_style(mut self, style: SuffixStyle) -> Self {
        self.style = style;
        self
    }

    /// Dynalib load and start addresses for the rtl872x DYNAMIC_LOCATION extension (default:
    /// both the address of the body).
    pub fn dynamic_location(mut self, dynalib_load: u32, dynalib_start: u32) -> Self {
        self.dynamic_location = Some((dynalib_load, dynalib_start));
        self
    }

    /// The parts of the module, with end address, SHA-256 and CRC-32 still to be filled by
    /// [`ModuleParts::build`].
    pub fn parts(&self) -> Result<ModuleParts> {
        if self.dependencies.len() > 2 {
            return Err(ModuleError::InvalidBuild {
                reason: "a module has at most two dependencies in its prefix",
            });
        }
        if self.flags.contains(ModuleFlags::COMPRESSED)
            || self.flags.contains(ModuleFlags::COMBINED)
        {
            return Err(ModuleError::InvalidBuild {
                reason:
                    "COMPRESSED and COMBINED are set by compress() and combine(), not the builder",
            });
        }
        let mut dependencies = [Dependency::EMPTY; 2];
        for (slot, dep) in dependencies.iter_mut().zip(&self.dependencies) {
            *slot = *dep;
        }
        let mut flags = self.flags;
        let mut prefix_extensions = self.prefix_extensions.clone();
        if !prefix_extensions.is_empty() {
            flags.insert(ModuleFlags::PREFIX_EXTENSIONS);
            if !prefix_extensions.last().is_some_and(Extension::is_end) {
                prefix_extensions.push(Extension::END);
            }
        }
        let mut body = self.body.clone();
        let product = self.product.unwrap_or(ProductData::NONE);
        let mut suffix_extensions = self.suffix_extensions.clone();
        let ends_list = |exts: &mut Vec<Extension>| {
            if exts
                .last()
                .is_some_and(|e| !e.is_end() && !matches!(e, Extension::ProductData { .. }))
            {
                exts.push(Extension::END);
            }
        };
        let product_data = match self.style {
            SuffixStyle::Nrf52840 => {
                body.extend_from_slice(&[0xff, 0xff]);
                ends_list(&mut suffix_extensions);
                Some(product)
            }
            SuffixStyle::Rtl872x => {
                // Placeholder addresses, fixed below once the start is known.
                suffix_extensions.push(Extension::DynamicLocation {
                    module_start: 0,
                    dynalib_load: 0,
                    dynalib_start: 0,
                });
                suffix_extensions.push(Extension::product_data(product.id, product.version));
                None
            }
            SuffixStyle::Plain => {
                ends_list(&mut suffix_extensions);
                self.product
            }
        };
        let mut parts = ModuleParts {
            head: self.head.clone(),
            prefix: Prefix {
                start_address: self.start_address,
                end_address: 0,
                mcu_target: self.mcu_target,
                flags,
                version: self.version,
                platform_id: self.platform_id,
                function: self.function,
                index: self.index,
                dependencies,
            },
            prefix_extensions,
            compressed_header: None,
            body,
            suffix: Suffix {
                extensions: suffix_extensions,
                product_data,
                reserved: 0,
                sha256: [0; 32],
            },
        };

        if let Some(end) = self.fixed_end {
            let overflow = ModuleError::FieldOverflow {
                field: "module_start_address",
                value: parts.file_len() as u64,
            };
            let len = u32::try_from(parts.file_len()).map_err(|_| overflow.clone())?;
            let mut start = end.checked_sub(len).ok_or(overflow.clone())?;
            let pad = start % GROWS_DOWN_START_ALIGNMENT;
            if pad != 0 {
                if let Some(Extension::End { len }) = parts.prefix_extensions.last_mut() {
                    // pad < 8, so this cannot overflow a u16 END length in practice.
                    *len = len.saturating_add(pad as u16);
                    start -= pad;
                }
            }
            parts.prefix.start_address = start;
        }

        if self.style == SuffixStyle::Rtl872x {
            let start = parts.prefix.start_address;
            let body_offset =
                parts.head.len() + PREFIX_LEN + extension::list_len(&parts.prefix_extensions);
            let body_at = start.wrapping_add(u32::try_from(body_offset).unwrap_or(u32::MAX));
            let (dynalib_load, dynalib_start) = self.dynamic_location.unwrap_or((body_at, body_at));
            for ext in &mut parts.suffix.extensions {
                if let Extension::DynamicLocation { .. } = ext {
                    *ext = Extension::DynamicLocation {
                        module_start: start,
                        dynalib_load,
                        dynalib_start,
                    };
                }
            }
        }
        Ok(parts)
    }

    /// The module file.
    pub fn build(&self) -> Result<Vec<u8>> {
        self.parts()?.build()
    }
}

/// Deterministic, poorly compressible but not random filler.
fn filler(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::{sha256_of_file, PREFIX_LEN};

    fn system_part_dep(version: u16) -> Dependency {
        Dependency {
            function: ModuleFunction::SystemPart,
            index: 1,
            version,
        }
    }

    #[test]
    fn built_nrf52840_user_part_parses_back_with_every_field_as_set() {
        let bytes = ModuleBuilder::new(ModuleFunction::UserPart, 26)
            .index(2)
            .version(6)
            .start_address(0xB4000)
            .dependency(system_part_dep(6200))
            .product(26, 4)
            .suffix_style(SuffixStyle::Nrf52840)
            .body_len(96 * 1024)
            .build()
            .unwrap();
        let m = Module::parse(&bytes).unwrap();
        assert_eq!(m.prefix_offset, 0);
        assert_eq!(m.prefix.start_address, 0xB4000);
        assert_eq!(m.prefix.end_address as usize, 0xB4000 + bytes.len() - 4);
        assert_eq!(m.prefix.function, ModuleFunction::UserPart);
        assert_eq!(m.prefix.platform_id, 26);
        assert_eq!(m.prefix.index, 2);
        assert_eq!(m.prefix.version, 6);
        assert_eq!(
            m.prefix.dependencies,
            [system_part_dep(6200), Dependency::EMPTY]
        );
        assert_eq!(m.prefix.flags, ModuleFlags::NONE);
        assert_eq!(m.product_id(), Some(26));
        assert_eq!(m.product_version(), Some(4));
        assert_eq!(m.suffix_size(), 40);
        assert!(m.crc_valid());
        assert_eq!(m.sha256(), sha256_of_file(&bytes));
        // FF FF filler right before the product id, as the nRF52840 linker script emits.
        assert_eq!(&bytes[m.body.end - 2..m.body.end], &[0xff, 0xff]);
        assert_eq!(m.body.len(), 96 * 1024 + 2);
    }

    #[test]
    fn built_rtl872x_user_part_grows_down_to_its_fixed_end() {
        let bytes = ModuleBuilder::new(ModuleFunction::UserPart, 32)
            .index(1)
            .version(6)
            .fixed_end(0x0860_0000)
            .dependency(system_part_dep(6200))
            .product(32, 7)
            .suffix_style(SuffixStyle::Rtl872x)
            .prefix_extension(Extension::AssetDependency {
                hash_type: 0,
                hash: vec![0x11; 32],
                name: "a.bin".into(),
            })
            .body_len(1001)
            .build()
            .unwrap();
        let m = Module::parse(&bytes).unwrap();
        assert_eq!(m.prefix.end_address + 4, 0x0860_0000);
        assert_eq!(m.prefix.start_address % 8, 0);
        assert!(m.prefix.flags.contains(ModuleFlags::PREFIX_EXTENSIONS));
        assert_eq!(m.prefix_extensions.len(), 2);
        assert!(m.prefix_extensions[1].is_end());
        assert_eq!(m.suffix_size(), 62);
        assert_eq!(m.product_id(), Some(32));
        assert_eq!(m.product_version(), Some(7));
        assert_eq!(
            m.suffix.extensions[0],
            Extension::DynamicLocation {
                module_start: m.prefix.start_address,
                dynalib_load: m.prefix.start_address + m.body.start as u32,
                dynalib_start: m.prefix.start_address + m.body.start as u32,
            }
        );
        assert!(m.crc_valid());
        assert_eq!(m.sha256(), sha256_of_file(&bytes));
    }

    #[test]
    fn built_module_with_vector_table_has_its_prefix_at_0x200() {
        let bytes = ModuleBuilder::new(ModuleFunction::Bootloader, 13)
            .version(3100)
            .start_address(0xF4000)
            .vector_table(0x200)
            .body_len(3000)
            .build()
            .unwrap();
        let m = Module::parse(&bytes).unwrap();
        assert_eq!(m.prefix_offset, 0x200);
        assert_eq!(m.body.start, 0x200 + PREFIX_LEN);
        assert_eq!(m.prefix.function, ModuleFunction::Bootloader);
        assert_eq!(m.product_id(), Some(0xffff));
    }

    #[test]
    fn suffix_extensions_go_before_the_product_data_and_end_with_end() {
        let bytes = ModuleBuilder::new(ModuleFunction::UserPart, 26)
            .start_address(0xB4000)
            .product(26, 3)
            .suffix_extension(Extension::Name("x".into()))
            .body_len(100)
            .build()
            .unwrap();
        let m = Module::parse(&bytes).unwrap();
        assert_eq!(
            m.suffix.extensions,
            vec![Extension::Name("x".into()), Extension::END]
        );
        assert_eq!(m.suffix_size(), 5 + 4 + 40);
        assert_eq!(m.product_id(), Some(26));
    }

    #[test]
    fn three_dependencies_are_refused() {
        let err = ModuleBuilder::new(ModuleFunction::UserPart, 26)
            .dependency(system_part_dep(1))
            .dependency(system_part_dep(2))
            .dependency(system_part_dep(3))
            .build()
            .unwrap_err();
        assert!(matches!(err, ModuleError::InvalidBuild { .. }));
    }
}
