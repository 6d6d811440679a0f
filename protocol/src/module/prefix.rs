//! The module prefix `module_info_t` (reference section 4.1): 24 bytes, little-endian, packed,
//! at the start of a module or after a vector table / image header.
//!
//! ```text
//!  0      4      8    9     10    12     14   15   16         20         24
//! +------+------+----+-----+-----+------+----+----+----------+----------+
//! |start | end  |mcu |flags| ver | plat |func|idx | dep 1    | dep 2    |
//! +------+------+----+-----+-----+------+----+----+----------+----------+
//! ```

use super::error::{ModuleError, Result};

mod field {
    pub type Field = core::ops::Range<usize>;

    pub const START_ADDRESS: Field = 0..4;
    pub const END_ADDRESS: Field = 4..8;
    pub const MCU_TARGET: usize = 8;
    pub const FLAGS: usize = 9;
    pub const VERSION: Field = 10..12;
    pub const PLATFORM_ID: Field = 12..14;
    pub const FUNCTION: usize = 14;
    pub const INDEX: usize = 15;
    pub const DEPENDENCY_1: Field = 16..20;
    pub const DEPENDENCY_2: Field = 20..24;

    /// Inside a dependency (4 bytes): function u8, index u8, version u16.
    pub const DEP_FUNCTION: usize = 0;
    pub const DEP_INDEX: usize = 1;
    pub const DEP_VERSION: Field = 2..4;
}

/// Size of `module_info_t`.
pub const PREFIX_LEN: usize = field::DEPENDENCY_2.end;

/// `module_function_t`: what a module is. Values this crate does not know are kept, never refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleFunction {
    /// 0: no module (empty dependency).
    None,
    /// 1
    Resource,
    /// 2
    Bootloader,
    /// 3
    MonoFirmware,
    /// 4
    SystemPart,
    /// 5
    UserPart,
    /// 6
    Settings,
    /// 7: NCP firmware (e.g. the ESP32 on Argon/Tracker).
    NcpFirmware,
    /// 8: radio stack (nRF52840 SoftDevice).
    RadioStack,
    /// 9: asset (Device OS >= 5.5.0).
    Asset,
    /// Any other value, kept as read.
    Unknown(u8),
}

impl ModuleFunction {
    /// True for the ten functions of reference section 4.1.
    pub fn is_known(self) -> bool {
        !matches!(self, ModuleFunction::Unknown(_))
    }
}

impl From<u8> for ModuleFunction {
    fn from(value: u8) -> Self {
        match value {
            0 => ModuleFunction::None,
            1 => ModuleFunction::Resource,
            2 => ModuleFunction::Bootloader,
            3 => ModuleFunction::MonoFirmware,
            4 => ModuleFunction::SystemPart,
            5 => ModuleFunction::UserPart,
            6 => ModuleFunction::Settings,
            7 => ModuleFunction::NcpFirmware,
            8 => ModuleFunction::RadioStack,
            9 => ModuleFunction::Asset,
            other => ModuleFunction::Unknown(other),
        }
    }
}

impl From<ModuleFunction> for u8 {
    fn from(value: ModuleFunction) -> Self {
        match value {
            ModuleFunction::None => 0,
            ModuleFunction::Resource => 1,
            ModuleFunction::Bootloader => 2,
            ModuleFunction::MonoFirmware => 3,
            ModuleFunction::SystemPart => 4,
            ModuleFunction::UserPart => 5,
            ModuleFunction::Settings => 6,
            ModuleFunction::NcpFirmware => 7,
            ModuleFunction::RadioStack => 8,
            ModuleFunction::Asset => 9,
            ModuleFunction::Unknown(other) => other,
        }
    }
}

/// The words a firmware engineer uses: "user part", "system part", "bootloader", ...
impl core::fmt::Display for ModuleFunction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = match self {
            ModuleFunction::None => "no module",
            ModuleFunction::Resource => "resource",
            ModuleFunction::Bootloader => "bootloader",
            ModuleFunction::MonoFirmware => "monolithic firmware",
            ModuleFunction::SystemPart => "system part",
            ModuleFunction::UserPart => "user part",
            ModuleFunction::Settings => "settings",
            ModuleFunction::NcpFirmware => "NCP firmware",
            ModuleFunction::RadioStack => "radio stack",
            ModuleFunction::Asset => "asset",
            ModuleFunction::Unknown(n) => return write!(f, "unknown module function {n}"),
        };
        f.write_str(name)
    }
}

/// `module_info_flags_t`, a bit set. Unknown bits are kept as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ModuleFlags(pub u8);

impl ModuleFlags {
    /// No flags.
    pub const NONE: ModuleFlags = ModuleFlags(0);
    /// 0x01: prefix, suffix and CRC are not copied to the destination.
    pub const DROP_MODULE_INFO: ModuleFlags = ModuleFlags(0x01);
    /// 0x02: a compressed-module header and a raw deflate stream follow the prefix (section 4.5).
    pub const COMPRESSED: ModuleFlags = ModuleFlags(0x02);
    /// 0x04: another complete module follows this one in the file (section 4.6).
    pub const COMBINED: ModuleFlags = ModuleFlags(0x04);
    /// 0x08: encrypted (rtl872x slot flag).
    pub const ENCRYPTED: ModuleFlags = ModuleFlags(0x08);
    /// 0x10: prefix extensions follow the 24-byte prefix.
    pub const PREFIX_EXTENSIONS: ModuleFlags = ModuleFlags(0x10);
    /// Every bit this crate knows.
    pub const ALL_KNOWN: ModuleFlags = ModuleFlags(0x1f);

    /// The raw byte.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// True if every bit of `other` is set.
    pub fn contains(self, other: ModuleFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets the bits of `other`.
    pub fn insert(&mut self, other: ModuleFlags) {
        self.0 |= other.0;
    }

    /// Clears the bits of `other`.
    pub fn remove(&mut self, other: ModuleFlags) {
        self.0 &= !other.0;
    }

    /// True if no bit outside [`ModuleFlags::ALL_KNOWN`] is set.
    pub fn is_known(self) -> bool {
        self.0 & !Self::ALL_KNOWN.0 == 0
    }
}

impl core::ops::BitOr for ModuleFlags {
    type Output = ModuleFlags;
    fn bitor(self, rhs: ModuleFlags) -> ModuleFlags {
        ModuleFlags(self.0 | rhs.0)
    }
}

impl core::ops::BitOrAssign for ModuleFlags {
    fn bitor_assign(&mut self, rhs: ModuleFlags) {
        self.0 |= rhs.0;
    }
}

/// A dependency: the installed module (function, index) must have at least `version`.
/// The empty dependency is function [`ModuleFunction::None`], index 0, version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dependency {
    /// Function of the module depended on (None for an empty dependency).
    pub function: ModuleFunction,
    /// Index of the module depended on.
    pub index: u8,
    /// Minimum version of the module depended on.
    pub version: u16,
}

impl Dependency {
    /// The empty dependency.
    pub const EMPTY: Dependency = Dependency {
        function: ModuleFunction::None,
        index: 0,
        version: 0,
    };

    /// True for a dependency with function None (whatever its index and version say).
    pub fn is_empty(&self) -> bool {
        self.function == ModuleFunction::None
    }

    fn parse(bytes: &[u8; 4]) -> Dependency {
        Dependency {
            function: ModuleFunction::from(bytes[field::DEP_FUNCTION]),
            index: bytes[field::DEP_INDEX],
            version: u16::from_le_bytes([
                bytes[field::DEP_VERSION.start],
                bytes[field::DEP_VERSION.start + 1],
            ]),
        }
    }

    fn emit(&self) -> [u8; 4] {
        let v = self.version.to_le_bytes();
        [u8::from(self.function), self.index, v[0], v[1]]
    }
}

impl Default for Dependency {
    fn default() -> Self {
        Dependency::EMPTY
    }
}

/// A read-only view over the 24 prefix bytes, checked for length once.
#[derive(Debug, Clone, Copy)]
pub struct PrefixView<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> PrefixView<T> {
    /// Wraps `buffer`, which must hold at least [`PREFIX_LEN`] bytes.
    pub fn new_checked(buffer: T) -> Result<PrefixView<T>> {
        let len = buffer.as_ref().len();
        if len < PREFIX_LEN {
            return Err(ModuleError::Truncated {
                what: "module prefix (module_info_t)",
                offset: 0,
                needed: PREFIX_LEN,
                len,
            });
        }
        Ok(PrefixView { buffer })
    }

    /// Byte `i` of the prefix; `new_checked` guarantees `i < PREFIX_LEN` is in bounds.
    fn byte(&self, i: usize) -> u8 {
        self.buffer.as_ref().get(i).copied().unwrap_or(0)
    }

    fn u16_at(&self, f: field::Field) -> u16 {
        u16::from_le_bytes([self.byte(f.start), self.byte(f.start + 1)])
    }

    fn u32_at(&self, f: field::Field) -> u32 {
        u32::from_le_bytes([
            self.byte(f.start),
            self.byte(f.start + 1),
            self.byte(f.start + 2),
            self.byte(f.start + 3),
        ])
    }

    /// Bytes 0..4: module_start_address.
    pub fn start_address(&self) -> u32 {
        self.u32_at(field::START_ADDRESS)
    }
    /// Bytes 4..8: module_end_address.
    pub fn end_address(&self) -> u32 {
        self.u32_at(field::END_ADDRESS)
    }
    /// Byte 8: reserved / MCU target.
    pub fn mcu_target(&self) -> u8 {
        self.byte(field::MCU_TARGET)
    }
    /// Byte 9: flags.
    pub fn flags(&self) -> ModuleFlags {
        ModuleFlags(self.byte(field::FLAGS))
    }
    /// Bytes 10..12: module version.
    pub fn version(&self) -> u16 {
        self.u16_at(field::VERSION)
    }
    /// Bytes 12..14: platform id.
    pub fn platform_id(&self) -> u16 {
        self.u16_at(field::PLATFORM_ID)
    }
    /// Byte 14: module function.
    pub fn function(&self) -> ModuleFunction {
        ModuleFunction::from(self.byte(field::FUNCTION))
    }
    /// Byte 15: module index.
    pub fn index(&self) -> u8 {
        self.byte(field::INDEX)
    }
    /// Dependency 0 (bytes 16..20) or 1 (bytes 20..24).
    pub fn dependency(&self, n: usize) -> Dependency {
        let f = if n == 0 {
            field::DEPENDENCY_1
        } else {
            field::DEPENDENCY_2
        };
        Dependency::parse(&[
            self.byte(f.start),
            self.byte(f.start + 1),
            self.byte(f.start + 2),
            self.byte(f.start + 3),
        ])
    }
}

/// The parsed prefix (`module_info_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// Address of the first byte of the module file (not of the prefix when a vector table
    /// precedes it).
    pub start_address: u32,
    /// Address of the first CRC byte; the file is `end - start + 4` bytes.
    pub end_address: u32,
    /// Reserved / MCU target (0x21 = ESP32 for NCP firmware, else 0).
    pub mcu_target: u8,
    /// Module flags.
    pub flags: ModuleFlags,
    /// Module version (the dynalib ABI version, not the product version).
    pub version: u16,
    /// Platform id (12 Argon, 13 Boron, 26 Tracker, 32 P2, ...).
    pub platform_id: u16,
    /// Module function.
    pub function: ModuleFunction,
    /// Module index (e.g. 1 for system-part1, 2 for the 256 KB nRF52840 user part).
    pub index: u8,
    /// Dependencies 1 and 2 (empty = function None).
    pub dependencies: [Dependency; 2],
}

impl Prefix {
    /// Reads the 24 prefix bytes at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Prefix> {
        let view = PrefixView::new_checked(bytes)?;
        Ok(Prefix {
            start_address: view.start_address(),
            end_address: view.end_address(),
            mcu_target: view.mcu_target(),
            flags: view.flags(),
            version: view.version(),
            platform_id: view.platform_id(),
            function: view.function(),
            index: view.index(),
            dependencies: [view.dependency(0), view.dependency(1)],
        })
    }

    /// Writes the 24 prefix bytes to the start of `buf`, which must be at least [`PREFIX_LEN`]
    /// bytes long.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let out = buf.get_mut(..PREFIX_LEN).ok_or(ModuleError::Truncated {
            what: "buffer for the module prefix",
            offset: 0,
            needed: PREFIX_LEN,
            len,
        })?;
        out[field::START_ADDRESS].copy_from_slice(&self.start_address.to_le_bytes());
        out[field::END_ADDRESS].copy_from_slice(&self.end_address.to_le_bytes());
        out[field::MCU_TARGET] = self.mcu_target;
        out[field::FLAGS] = self.flags.bits();
        out[field::VERSION].copy_from_slice(&self.version.to_le_bytes());
        out[field::PLATFORM_ID].copy_from_slice(&self.platform_id.to_le_bytes());
        out[field::FUNCTION] = u8::from(self.function);
        out[field::INDEX] = self.index;
        out[field::DEPENDENCY_1].copy_from_slice(&self.dependencies[0].emit());
        out[field::DEPENDENCY_2].copy_from_slice(&self.dependencies[1].emit());
        Ok(())
    }

    /// The 24 prefix bytes.
    pub fn to_bytes(&self) -> [u8; PREFIX_LEN] {
        let mut out = [0u8; PREFIX_LEN];
        // The buffer has exactly PREFIX_LEN bytes, so emit cannot fail.
        let _ = self.emit(&mut out);
        out
    }

    /// The file length this prefix declares (`end - start + 4`), if end > start.
    pub fn declared_len(&self) -> Option<usize> {
        if self.end_address <= self.start_address {
            return None;
        }
        usize::try_from(self.end_address - self.start_address)
            .ok()?
            .checked_add(4)
    }

    /// True if the fields look like a real prefix apart from the size: a module function
    /// other than None, and empty dependencies with index and version 0.
    pub(crate) fn is_plausible(&self) -> bool {
        self.end_address > self.start_address
            && self.function != ModuleFunction::None
            && self
                .dependencies
                .iter()
                .all(|d| !d.is_empty() || (d.index == 0 && d.version == 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // First 24 bytes of tracker-tinker@5.3.1.bin.
    const TRACKER_TINKER_PREFIX: [u8; 24] = [
        0x00, 0x40, 0x0b, 0x00, 0xd6, 0x5a, 0x0b, 0x00, 0x00, 0x00, 0x06, 0x00, 0x1a, 0x00, 0x05,
        0x02, 0x04, 0x01, 0xb5, 0x14, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn prefix_of_a_real_user_part_reads_every_field() {
        let p = Prefix::parse(&TRACKER_TINKER_PREFIX).unwrap();
        assert_eq!(p.start_address, 0xb4000);
        assert_eq!(p.end_address, 0xb5ad6);
        assert_eq!(p.mcu_target, 0);
        assert_eq!(p.flags, ModuleFlags::NONE);
        assert_eq!(p.version, 6);
        assert_eq!(p.platform_id, 26);
        assert_eq!(p.function, ModuleFunction::UserPart);
        assert_eq!(p.index, 2);
        assert_eq!(
            p.dependencies,
            [
                Dependency {
                    function: ModuleFunction::SystemPart,
                    index: 1,
                    version: 5301
                },
                Dependency::EMPTY
            ]
        );
        assert_eq!(p.declared_len(), Some(6874));
    }

    #[test]
    fn prefix_emits_the_bytes_it_was_parsed_from() {
        let p = Prefix::parse(&TRACKER_TINKER_PREFIX).unwrap();
        assert_eq!(p.to_bytes(), TRACKER_TINKER_PREFIX);
    }

    #[test]
    fn prefix_shorter_than_24_bytes_is_truncated() {
        let err = Prefix::parse(&TRACKER_TINKER_PREFIX[..23]).unwrap_err();
        assert!(matches!(
            err,
            ModuleError::Truncated {
                needed: 24,
                len: 23,
                ..
            }
        ));
    }

    #[test]
    fn unknown_function_and_flags_are_kept() {
        let mut bytes = TRACKER_TINKER_PREFIX;
        bytes[14] = 0x42;
        bytes[9] = 0x80;
        let p = Prefix::parse(&bytes).unwrap();
        assert_eq!(p.function, ModuleFunction::Unknown(0x42));
        assert!(!p.flags.is_known());
        assert_eq!(p.to_bytes(), bytes);
    }

    #[test]
    fn function_numbers_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(ModuleFunction::from(v)), v);
        }
    }
}
