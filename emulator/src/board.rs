//! Board definitions: which flash chips a Particle device has and where each module, staging area
//! and file system lives on them, loaded from `boards/*.toml` and validated.
//!
//! Implements `shared/reference/particle-protocol.md` section 4 (module identities, platform ids,
//! MCU families) and section 5.1 (flash layouts), plus the OTA limits of sections 1.7/2.2
//! (`max_binary_size`, chunk size) and the nRF52840 bootloader-update locations of section 5.3.
//! The bootloader and the flash model use a [`Board`] to decide where modules are copied from and
//! to; the emulator uses it to size its simulated flash chips ([`Board::chips`]).
//!
//! A board file is parsed into a [`BoardSpec`] (plain serde data, strings for enums) and then
//! converted into a [`Board`], whose invariants are checked by [`Board::validate`]: regions lie
//! inside their chip, are sector aligned, do not overlap unless allowed, the required regions
//! exist, and `max_binary_size` fits the OTA staging area. Every error names the file and the
//! field ([`BoardError`]). The seven built-in boards are compiled in ([`Board::builtin`]), so the
//! emulator needs no `boards/` folder at run time.
//!
//! Addresses are absolute addresses on their chip (rtl872x: the XIP address 0x08000000 + offset);
//! region ends are exclusive.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a board definition could not be loaded.
///
/// `file` is the source name given to [`Board::from_toml_str`] (the path for [`Board::load`],
/// `builtin:<name>` for built-in boards). (The field is not called `source` because thiserror
/// reserves that name for the error-chain source.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoardError {
    /// TOML syntax error, wrong value type, unknown or missing key. `message` is toml's own
    /// message, which includes the line and column; `line` is the 1-based line when known.
    #[error("{file}: {message}")]
    Toml {
        file: String,
        line: Option<usize>,
        message: String,
    },
    /// A value is well-formed TOML but not a valid board; `field` is the dotted key path, e.g.
    /// `regions.user_part.end`.
    #[error("{file}: {field}: {problem}")]
    Field {
        file: String,
        field: String,
        problem: String,
    },
    /// The board file could not be read.
    #[error("{file}: cannot read board file: {message}")]
    Io { file: String, message: String },
    /// [`Board::builtin`] was asked for a name that is not built in.
    #[error("unknown built-in board {name:?} (built-in boards: {known})")]
    UnknownBuiltin { name: String, known: String },
}

impl BoardError {
    /// The dotted field path for [`BoardError::Field`], otherwise `None`.
    pub fn field(&self) -> Option<&str> {
        match self {
            BoardError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

fn field_err(file: &str, field: impl Into<String>, problem: impl Into<String>) -> BoardError {
    BoardError::Field {
        file: file.to_string(),
        field: field.into(),
        problem: problem.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------------------------

/// MCU family (reference section 4: nRF52840 = platforms 12,13,15,22,23,25,26; rtl872x = 28,32,35).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum McuFamily {
    /// Nordic nRF52840: 1 MiB internal flash plus external QSPI flash.
    Nrf52840,
    /// Realtek RTL872x: one 8 MiB QSPI flash mapped at 0x08000000 (modelled as `internal`).
    Rtl872x,
}

impl McuFamily {
    /// All families.
    pub const ALL: [McuFamily; 2] = [McuFamily::Nrf52840, McuFamily::Rtl872x];

    /// Name used in board files: `nrf52840` or `rtl872x`.
    pub fn as_str(self) -> &'static str {
        match self {
            McuFamily::Nrf52840 => "nrf52840",
            McuFamily::Rtl872x => "rtl872x",
        }
    }
}

impl fmt::Display for McuFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for McuFamily {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        McuFamily::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown MCU family {s:?} (expected one of: nrf52840, rtl872x)"))
    }
}

/// A flash chip of a board. (Distinct from `emulator::flash::ChipId`; map between them.)
///
/// On nRF52840 boards `Internal` is the MCU flash and `External` the QSPI flash (DCT slot device
/// 0 / 1, reference 5.2). rtl872x boards have only `Internal` (the single XIP QSPI flash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chip {
    Internal,
    External,
}

impl Chip {
    /// Name used in board files: `internal` or `external`.
    pub fn as_str(self) -> &'static str {
        match self {
            Chip::Internal => "internal",
            Chip::External => "external",
        }
    }
}

impl fmt::Display for Chip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Chip {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "internal" => Ok(Chip::Internal),
            "external" => Ok(Chip::External),
            _ => Err(format!(
                "unknown chip {s:?} (expected \"internal\" or \"external\")"
            )),
        }
    }
}

/// What a flash region is used for. Each kind occurs at most once per board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegionKind {
    /// Nordic MBR (nRF52840, not a Particle module).
    Mbr,
    /// SoftDevice S140 (nRF52840, module 8/0).
    RadioStack,
    /// Bootloader (module 2/0).
    Bootloader,
    /// system-part1 (module 4/1).
    SystemPart,
    /// User part (nRF52840: 256 KB, 5/2; rtl872x: 5/1, anchored at its end).
    UserPart,
    /// nRF52840 128 KB compat user part (5/1), overlapping the tail of `UserPart`.
    UserPartLegacy,
    /// rtl872x KM0 MBR (2/1).
    Km0Mbr,
    /// rtl872x KM0 part1 / prebootloader (2/2).
    Km0Part1,
    /// rtl872x boot info sector.
    BootInfo,
    /// Factory user app (nRF52840 external flash).
    FactoryApp,
    /// Reserved space (nRF52840: bootloader-update backup; rtl872x: backup-RAM copy).
    Reserved,
    /// OTA staging area (`EXTERNAL_FLASH_OTA_ADDRESS` / rtl872x OTA region).
    OtaStaging,
    /// Asset LittleFS (Device OS >= 5.5.0).
    AssetFs,
    /// System LittleFS (DCT, `/sys/fw_transfer`, ...).
    FileSystem,
}

impl RegionKind {
    /// All kinds, in declaration order.
    pub const ALL: [RegionKind; 14] = [
        RegionKind::Mbr,
        RegionKind::RadioStack,
        RegionKind::Bootloader,
        RegionKind::SystemPart,
        RegionKind::UserPart,
        RegionKind::UserPartLegacy,
        RegionKind::Km0Mbr,
        RegionKind::Km0Part1,
        RegionKind::BootInfo,
        RegionKind::FactoryApp,
        RegionKind::Reserved,
        RegionKind::OtaStaging,
        RegionKind::AssetFs,
        RegionKind::FileSystem,
    ];

    /// Regions every board must define.
    pub const REQUIRED: [RegionKind; 5] = [
        RegionKind::Bootloader,
        RegionKind::SystemPart,
        RegionKind::UserPart,
        RegionKind::OtaStaging,
        RegionKind::FileSystem,
    ];

    /// Name used in board files (the key under `[regions]`), e.g. `user_part_legacy`.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionKind::Mbr => "mbr",
            RegionKind::RadioStack => "radio_stack",
            RegionKind::Bootloader => "bootloader",
            RegionKind::SystemPart => "system_part",
            RegionKind::UserPart => "user_part",
            RegionKind::UserPartLegacy => "user_part_legacy",
            RegionKind::Km0Mbr => "km0_mbr",
            RegionKind::Km0Part1 => "km0_part1",
            RegionKind::BootInfo => "boot_info",
            RegionKind::FactoryApp => "factory_app",
            RegionKind::Reserved => "reserved",
            RegionKind::OtaStaging => "ota_staging",
            RegionKind::AssetFs => "asset_fs",
            RegionKind::FileSystem => "file_system",
        }
    }
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RegionKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RegionKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = RegionKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown region kind {s:?} (expected one of: {})",
                    known.join(", ")
                )
            })
    }
}

/// Where a module sits inside its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Anchor {
    /// The module starts at the region start (all regions except the rtl872x user part).
    #[default]
    Start,
    /// The module ends at the region end and grows down (rtl872x user part, fixed end
    /// 0x08600000); its start need not be sector aligned.
    End,
}

impl Anchor {
    /// Name used in board files: `start` or `end`.
    pub fn as_str(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::End => "end",
        }
    }
}

impl FromStr for Anchor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "start" => Ok(Anchor::Start),
            "end" => Ok(Anchor::End),
            _ => Err(format!(
                "unknown anchor {s:?} (expected \"start\" or \"end\")"
            )),
        }
    }
}

/// Module identity (`module_function`, `module_index` of the module prefix, reference 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSlotId {
    pub function: u8,
    pub index: u8,
}

impl fmt::Display for ModuleSlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.function, self.index)
    }
}

// ---------------------------------------------------------------------------------------------
// Validated form
// ---------------------------------------------------------------------------------------------

/// Geometry of one flash chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChipGeometry {
    /// First address of the chip.
    pub base: u32,
    /// Size in bytes (a multiple of `sector_size`).
    pub size: u32,
    /// Erase unit in bytes (power of two; 4096 on all boards).
    pub sector_size: u32,
    /// Program (write) unit in bytes (power of two dividing `sector_size`; 4 on all boards).
    pub program_unit: u32,
}

impl ChipGeometry {
    /// Exclusive end address (`base + size`; saturates for an unvalidated geometry).
    pub fn end(&self) -> u32 {
        self.base.saturating_add(self.size)
    }

    /// Whether `[start, end)` lies inside the chip.
    pub fn contains_range(&self, start: u32, end: u32) -> bool {
        start >= self.base && end <= self.end() && start <= end
    }
}

/// The flash chips of a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashChips {
    pub internal: ChipGeometry,
    /// Present on nRF52840 boards, absent on rtl872x boards.
    pub external: Option<ChipGeometry>,
}

/// A flash region: `[start, end)` on `chip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub kind: RegionKind,
    pub chip: Chip,
    /// First address (for `Anchor::End` regions: the lowest address the module may start at).
    pub start: u32,
    /// Exclusive end address.
    pub end: u32,
    /// The module identity stored here, if the region holds a module slot.
    pub module: Option<ModuleSlotId>,
    /// Whether the module is placed at the start or the end of the region.
    pub anchor: Anchor,
    /// Regions this one may overlap. Symmetric in a validated [`Board`]: if A lists B, B lists A.
    pub may_overlap: Vec<RegionKind>,
}

impl Region {
    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.end - self.start
    }

    /// Always false for a validated region (regions are non-empty).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Whether `addr` is inside the region (same chip assumed).
    pub fn contains(&self, addr: u32) -> bool {
        addr >= self.start && addr < self.end
    }

    /// Whether the two regions share at least one byte (same chip and intersecting ranges).
    pub fn overlaps(&self, other: &Region) -> bool {
        self.chip == other.chip && self.start < other.end && other.start < self.end
    }

    /// Whether this region is allowed to overlap `kind`.
    pub fn may_overlap(&self, kind: RegionKind) -> bool {
        self.may_overlap.contains(&kind)
    }

    /// Where a module of `len` bytes (file size incl. CRC) is placed in this region according to
    /// the anchor: `[start, start + len)` or `[end - len, end)`. `None` if it does not fit.
    pub fn placement(&self, len: u32) -> Option<(u32, u32)> {
        if len > self.len() {
            return None;
        }
        Some(match self.anchor {
            Anchor::Start => (self.start, self.start + len),
            Anchor::End => (self.end - len, self.end),
        })
    }
}

/// A location on a chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashLocation {
    pub chip: Chip,
    pub address: u32,
}

/// nRF52840 bootloader update through the Nordic MBR (reference 5.3): the new bootloader is staged
/// at `staging` (internal 0xD4000, the compat user-app area) and the user-app bytes it overwrites
/// are first backed up at `backup` (external). Both areas are `len` bytes = the bootloader region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootloaderUpdate {
    pub staging: FlashLocation,
    pub backup: FlashLocation,
    pub len: u32,
}

/// OTA parameters of a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaParams {
    /// `HAL_OTA_FlashLength()`, sent in Hello: 1_536_000 (nRF52840), 1_572_864 (rtl872x).
    pub max_binary_size: u32,
    /// Preferred chunk size sent in Hello (512); 512..=1136 and a multiple of 4 (reference 2.2).
    pub chunk_size: u32,
    /// nRF52840 only.
    pub bootloader_update: Option<BootloaderUpdate>,
}

/// Baseline version of one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleVersion {
    pub region: RegionKind,
    pub module: ModuleSlotId,
    pub version: u16,
}

/// Baseline firmware of a board (what a fresh emulated device has installed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Defaults {
    /// Device OS version string, e.g. `6.2.0`.
    pub device_os: Option<String>,
    pub module_versions: Vec<ModuleVersion>,
}

/// A validated board definition.
///
/// Fields are public for reading; if you modify a board, call [`Board::validate`] again.
/// It also implements `Deserialize` (validating; errors then name the file `<deserialized>`) so it
/// can be embedded in other configuration files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BoardSpec")]
pub struct Board {
    /// Short name, e.g. `boron` (the built-in name and file stem).
    pub name: String,
    /// Human-readable name, e.g. `B-SoM`.
    pub display_name: String,
    /// Platform id (reference 4): 12 argon, 13 boron, 23 bsom, 25 b5som, 26 tracker, 32 p2, 35 msom.
    pub platform_id: u16,
    pub mcu: McuFamily,
    pub flash: FlashChips,
    /// Sorted by chip (internal first) and start address.
    pub regions: Vec<Region>,
    pub ota: OtaParams,
    pub defaults: Defaults,
    /// The source name the board was loaded from (used in error messages).
    pub source: String,
}

const BUILTINS: [(&str, &str); 7] = [
    (
        "boron",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../boards/boron.toml")),
    ),
    (
        "argon",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../boards/argon.toml")),
    ),
    (
        "bsom",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../boards/bsom.toml")),
    ),
    (
        "b5som",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../boards/b5som.toml")),
    ),
    (
        "tracker",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../boards/tracker.toml"
        )),
    ),
    (
        "p2",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../boards/p2.toml")),
    ),
    (
        "msom",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../boards/msom.toml")),
    ),
];

const BUILTIN_NAMES: [&str; 7] = ["boron", "argon", "bsom", "b5som", "tracker", "p2", "msom"];

impl Board {
    /// Parse and validate a board from TOML text. `source_name` (usually the file path) is
    /// used in error messages.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Board, BoardError> {
        let spec: BoardSpec = toml::from_str(text).map_err(|e| BoardError::Toml {
            file: source_name.to_string(),
            line: e.span().map(|span| line_of(text, span.start)),
            message: e.to_string(),
        })?;
        Board::from_spec(spec, source_name)
    }

    /// Read, parse and validate a board file.
    pub fn load(path: impl AsRef<Path>) -> Result<Board, BoardError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| BoardError::Io {
            file: file.clone(),
            message: e.to_string(),
        })?;
        Board::from_toml_str(&text, &file)
    }

    /// A built-in board (compiled in from `boards/<name>.toml`); see [`Board::builtin_names`].
    pub fn builtin(name: &str) -> Result<Board, BoardError> {
        let text = Board::builtin_toml(name).ok_or_else(|| BoardError::UnknownBuiltin {
            name: name.to_string(),
            known: BUILTIN_NAMES.join(", "),
        })?;
        Board::from_toml_str(text, &format!("builtin:{name}"))
    }

    /// The TOML text of a built-in board.
    pub fn builtin_toml(name: &str) -> Option<&'static str> {
        BUILTINS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, text)| *text)
    }

    /// Names of the built-in boards: boron, argon, bsom, b5som, tracker, p2, msom.
    pub fn builtin_names() -> &'static [&'static str] {
        &BUILTIN_NAMES
    }

    /// Convert a parsed spec into a board and validate it.
    pub fn from_spec(spec: BoardSpec, source_name: &str) -> Result<Board, BoardError> {
        let board = convert(spec, source_name)?;
        board.validate()?;
        Ok(board)
    }

    /// The chips of the board with their geometry (internal first).
    pub fn chips(&self) -> Vec<(Chip, ChipGeometry)> {
        let mut chips = vec![(Chip::Internal, self.flash.internal)];
        if let Some(ext) = self.flash.external {
            chips.push((Chip::External, ext));
        }
        chips
    }

    /// Geometry of one chip, if the board has it.
    pub fn chip(&self, chip: Chip) -> Option<&ChipGeometry> {
        match chip {
            Chip::Internal => Some(&self.flash.internal),
            Chip::External => self.flash.external.as_ref(),
        }
    }

    /// The region of the given kind.
    pub fn region(&self, kind: RegionKind) -> Option<&Region> {
        self.regions.iter().find(|r| r.kind == kind)
    }

    /// The region that holds the installed module `function`/`index` (at most one per board).
    pub fn region_for_module(&self, function: u8, index: u8) -> Option<&Region> {
        let id = ModuleSlotId { function, index };
        self.regions.iter().find(|r| r.module == Some(id))
    }

    /// All regions on `chip` that contain `addr`.
    pub fn regions_at(&self, chip: Chip, addr: u32) -> Vec<&Region> {
        self.regions
            .iter()
            .filter(|r| r.chip == chip && r.contains(addr))
            .collect()
    }

    /// The OTA staging region (always present in a validated board).
    pub fn ota_staging(&self) -> &Region {
        self.region(RegionKind::OtaStaging)
            .expect("validated board has an ota_staging region")
    }

    /// Baseline version of module `function`/`index` from `[defaults.module_versions]`.
    pub fn default_module_version(&self, function: u8, index: u8) -> Option<u16> {
        let id = ModuleSlotId { function, index };
        self.defaults
            .module_versions
            .iter()
            .find(|m| m.module == id)
            .map(|m| m.version)
    }

    /// Check all invariants (see the module documentation). Errors name `self.source`.
    pub fn validate(&self) -> Result<(), BoardError> {
        let file = self.source.as_str();
        let err = |field: String, problem: String| field_err(file, field, problem);

        if self.name.trim().is_empty() || self.name.chars().any(char::is_whitespace) {
            return Err(err(
                "name".into(),
                format!(
                    "board name {:?} must be non-empty without spaces",
                    self.name
                ),
            ));
        }

        // Chips.
        match (self.mcu, self.flash.external.is_some()) {
            (McuFamily::Nrf52840, false) => {
                return Err(err(
                    "flash.external".into(),
                    "nrf52840 boards need an external QSPI flash chip".into(),
                ))
            }
            (McuFamily::Rtl872x, true) => {
                return Err(err(
                    "flash.external".into(),
                    "rtl872x boards have a single QSPI flash; model it as flash.internal only"
                        .into(),
                ))
            }
            _ => {}
        }
        for (chip, g) in self.chips() {
            let f = |name: &str| format!("flash.{chip}.{name}");
            if g.sector_size == 0 || !g.sector_size.is_power_of_two() {
                return Err(err(
                    f("sector_size"),
                    format!("sector size {} is not a power of two", g.sector_size),
                ));
            }
            if g.program_unit == 0
                || !g.program_unit.is_power_of_two()
                || g.program_unit > g.sector_size
            {
                return Err(err(
                    f("program_unit"),
                    format!(
                        "program unit {} must be a power of two no larger than the sector size {}",
                        g.program_unit, g.sector_size
                    ),
                ));
            }
            if g.size == 0 || !aligned(g.size, g.sector_size) {
                return Err(err(
                    f("size"),
                    format!(
                        "size {:#X} is not a non-zero multiple of the sector size {:#X}",
                        g.size, g.sector_size
                    ),
                ));
            }
            if !aligned(g.base, g.sector_size) {
                return Err(err(
                    f("base"),
                    format!("base {:#X} is not sector aligned", g.base),
                ));
            }
            if u64::from(g.base) + u64::from(g.size) > u64::from(u32::MAX) {
                return Err(err(
                    f("size"),
                    format!(
                        "base {:#X} + size {:#X} exceeds the 32-bit address space",
                        g.base, g.size
                    ),
                ));
            }
        }

        // Regions on their own.
        let mut seen: BTreeMap<RegionKind, ()> = BTreeMap::new();
        for r in &self.regions {
            let f = |name: &str| format!("regions.{}.{name}", r.kind);
            if seen.insert(r.kind, ()).is_some() {
                return Err(err(
                    format!("regions.{}", r.kind),
                    "duplicate region".into(),
                ));
            }
            let Some(g) = self.chip(r.chip) else {
                return Err(err(
                    f("chip"),
                    format!("the board has no {} flash chip", r.chip),
                ));
            };
            if r.end <= r.start {
                return Err(err(
                    f("end"),
                    if r.end == r.start {
                        format!("region is empty (start = end = {:#X})", r.start)
                    } else {
                        format!("end {:#X} is before start {:#X}", r.end, r.start)
                    },
                ));
            }
            if r.start < g.base {
                return Err(err(
                    f("start"),
                    format!(
                        "start {:#X} is outside the {} flash ({:#X}-{:#X})",
                        r.start,
                        r.chip,
                        g.base,
                        g.end()
                    ),
                ));
            }
            if r.end > g.end() {
                return Err(err(
                    f("end"),
                    format!(
                        "end {:#X} is outside the {} flash ({:#X}-{:#X})",
                        r.end,
                        r.chip,
                        g.base,
                        g.end()
                    ),
                ));
            }
            if r.anchor == Anchor::Start && !aligned(r.start - g.base, g.sector_size) {
                return Err(err(
                    f("start"),
                    format!(
                        "start {:#X} is not aligned to the {:#X}-byte sector size",
                        r.start, g.sector_size
                    ),
                ));
            }
            if !aligned(r.end - g.base, g.sector_size) {
                return Err(err(
                    f("end"),
                    format!(
                        "end {:#X} is not aligned to the {:#X}-byte sector size",
                        r.end, g.sector_size
                    ),
                ));
            }
            if let Some(m) = r.module {
                if !(1..=9).contains(&m.function) {
                    return Err(err(
                        f("module.function"),
                        format!(
                            "module function {} is not a known module function (1..=9)",
                            m.function
                        ),
                    ));
                }
            }
            for other in &r.may_overlap {
                if *other == r.kind {
                    return Err(err(
                        f("may_overlap"),
                        format!("region lists itself ({other})"),
                    ));
                }
                if self.region(*other).is_none() {
                    return Err(err(
                        f("may_overlap"),
                        format!("names region {other}, which this board does not define"),
                    ));
                }
            }
        }

        // Required regions.
        for kind in RegionKind::REQUIRED {
            if self.region(kind).is_none() {
                return Err(err(
                    format!("regions.{kind}"),
                    "required region is missing".into(),
                ));
            }
        }

        // Pairwise: overlaps and module identities.
        for (i, a) in self.regions.iter().enumerate() {
            for b in &self.regions[i + 1..] {
                if a.overlaps(b) && !a.may_overlap(b.kind) && !b.may_overlap(a.kind) {
                    return Err(err(
                        format!("regions.{}", a.kind),
                        format!(
                            "{:#X}-{:#X} overlaps regions.{} ({:#X}-{:#X}) on the {} flash, \
                             and neither lists the other in may_overlap",
                            a.start, a.end, b.kind, b.start, b.end, a.chip
                        ),
                    ));
                }
                if a.module.is_some() && a.module == b.module {
                    return Err(err(
                        format!("regions.{}.module", b.kind),
                        format!(
                            "module {} is already stored in regions.{}",
                            b.module.unwrap_or(ModuleSlotId {
                                function: 0,
                                index: 0
                            }),
                            a.kind
                        ),
                    ));
                }
            }
        }

        // OTA.
        let staging = self.ota_staging();
        if self.ota.max_binary_size == 0 || self.ota.max_binary_size > staging.len() {
            return Err(err(
                "ota.max_binary_size".into(),
                format!(
                    "max_binary_size {} does not fit the OTA staging region ({} bytes)",
                    self.ota.max_binary_size,
                    staging.len()
                ),
            ));
        }
        let cs = self.ota.chunk_size;
        if !(512..=1136).contains(&cs) || !aligned(cs, 4) {
            return Err(err(
                "ota.chunk_size".into(),
                format!("chunk size {cs} must be 512..=1136 and a multiple of 4"),
            ));
        }
        if let Some(bu) = &self.ota.bootloader_update {
            if self.mcu != McuFamily::Nrf52840 {
                return Err(err(
                    "ota.bootloader_update".into(),
                    "bootloader staging through the Nordic MBR exists only on nrf52840".into(),
                ));
            }
            let bl_len = self
                .region(RegionKind::Bootloader)
                .map(Region::len)
                .unwrap_or(0);
            if bu.len != bl_len {
                return Err(err(
                    "ota.bootloader_update".into(),
                    format!(
                        "length {:#X} differs from the bootloader region ({bl_len:#X})",
                        bu.len
                    ),
                ));
            }
            for (name, loc) in [("staging", bu.staging), ("backup", bu.backup)] {
                let field = format!("ota.bootloader_update.{name}.address");
                let Some(g) = self.chip(loc.chip) else {
                    return Err(err(
                        format!("ota.bootloader_update.{name}.chip"),
                        format!("the board has no {} flash chip", loc.chip),
                    ));
                };
                let end = u64::from(loc.address) + u64::from(bu.len);
                if loc.address < g.base || end > u64::from(g.end()) {
                    return Err(err(
                        field,
                        format!(
                            "{:#X}-{end:#X} is outside the {} flash ({:#X}-{:#X})",
                            loc.address,
                            loc.chip,
                            g.base,
                            g.end()
                        ),
                    ));
                }
                if !aligned(loc.address - g.base, g.sector_size) {
                    return Err(err(
                        field,
                        format!("address {:#X} is not sector aligned", loc.address),
                    ));
                }
            }
        }

        // Defaults.
        for mv in &self.defaults.module_versions {
            let field = format!("defaults.module_versions.{}", mv.region);
            match self.region(mv.region) {
                None => return Err(err(field, format!("the board has no {} region", mv.region))),
                Some(r) if r.module != Some(mv.module) => {
                    return Err(err(
                        field,
                        format!("region {} does not hold module {}", mv.region, mv.module),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl TryFrom<BoardSpec> for Board {
    type Error = BoardError;
    fn try_from(spec: BoardSpec) -> Result<Board, BoardError> {
        Board::from_spec(spec, "<deserialized>")
    }
}

/// `x` is a multiple of `align`, a power of two (written with a mask so it builds on the
/// workspace MSRV 1.85, which lacks `u32::is_multiple_of`).
fn aligned(x: u32, align: u32) -> bool {
    x & (align - 1) == 0
}

fn line_of(text: &str, byte_offset: usize) -> usize {
    let end = byte_offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

// ---------------------------------------------------------------------------------------------
// Raw (file) form
// ---------------------------------------------------------------------------------------------

/// A board file as written (see `boards/boron.toml`). Enum-like values are strings here and are
/// checked by [`Board::from_spec`], so their errors name the field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardSpec {
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    pub platform_id: u16,
    /// `nrf52840` or `rtl872x`.
    pub mcu: String,
    pub flash: FlashSpec,
    pub ota: OtaSpec,
    #[serde(default)]
    pub defaults: DefaultsSpec,
    /// Keyed by region kind (`user_part`, `ota_staging`, ...).
    pub regions: BTreeMap<String, RegionSpec>,
}

/// `[flash]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlashSpec {
    pub internal: ChipSpec,
    #[serde(default)]
    pub external: Option<ChipSpec>,
}

/// `[flash.internal]` / `[flash.external]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChipSpec {
    pub base: u32,
    pub size: u32,
    pub sector_size: u32,
    pub program_unit: u32,
}

/// `[regions.<kind>]`: give two of `start`, `end`, `size` (all three must agree).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// `internal` or `external`.
    pub chip: String,
    #[serde(default)]
    pub start: Option<u32>,
    /// Exclusive.
    #[serde(default)]
    pub end: Option<u32>,
    #[serde(default)]
    pub size: Option<u32>,
    #[serde(default)]
    pub module: Option<ModuleSlotId>,
    /// `start` (default) or `end`.
    #[serde(default)]
    pub anchor: Option<String>,
    /// Region kinds this region may overlap.
    #[serde(default)]
    pub may_overlap: Vec<String>,
}

/// `[ota]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaSpec {
    pub max_binary_size: u32,
    /// Defaults to 512.
    #[serde(default)]
    pub chunk_size: Option<u32>,
    #[serde(default)]
    pub bootloader_update: Option<BootloaderUpdateSpec>,
}

/// `[ota.bootloader_update]` (nRF52840).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootloaderUpdateSpec {
    pub staging: LocationSpec,
    pub backup: LocationSpec,
}

/// `{ chip = "...", address = ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationSpec {
    pub chip: String,
    pub address: u32,
}

/// `[defaults]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSpec {
    #[serde(default)]
    pub device_os: Option<String>,
    /// Region kind -> module version of the module stored there.
    #[serde(default)]
    pub module_versions: BTreeMap<String, u16>,
}

fn convert(spec: BoardSpec, file: &str) -> Result<Board, BoardError> {
    let err = |field: String, problem: String| field_err(file, field, problem);

    let mcu: McuFamily = spec.mcu.parse().map_err(|p| err("mcu".into(), p))?;
    let chip_geom = |c: ChipSpec| ChipGeometry {
        base: c.base,
        size: c.size,
        sector_size: c.sector_size,
        program_unit: c.program_unit,
    };
    let flash = FlashChips {
        internal: chip_geom(spec.flash.internal),
        external: spec.flash.external.map(chip_geom),
    };

    let mut regions = Vec::with_capacity(spec.regions.len());
    for (key, r) in &spec.regions {
        let f = |name: &str| format!("regions.{key}.{name}");
        let kind: RegionKind = key.parse().map_err(|p| err(format!("regions.{key}"), p))?;
        let chip: Chip = r.chip.parse().map_err(|p| err(f("chip"), p))?;
        let anchor: Anchor = match &r.anchor {
            None => Anchor::Start,
            Some(a) => a.parse().map_err(|p| err(f("anchor"), p))?,
        };
        let (start, end) = resolve_range(r).map_err(|(name, p)| err(f(name), p))?;
        let mut may_overlap = Vec::with_capacity(r.may_overlap.len());
        for o in &r.may_overlap {
            let k: RegionKind = o.parse().map_err(|p| err(f("may_overlap"), p))?;
            if !may_overlap.contains(&k) {
                may_overlap.push(k);
            }
        }
        regions.push(Region {
            kind,
            chip,
            start,
            end,
            module: r.module,
            anchor,
            may_overlap,
        });
    }
    // Make may_overlap symmetric (only for kinds that exist; validate reports the others).
    let pairs: Vec<(RegionKind, RegionKind)> = regions
        .iter()
        .flat_map(|r| r.may_overlap.iter().map(move |o| (*o, r.kind)))
        .collect();
    for (target, kind) in pairs {
        if let Some(r) = regions.iter_mut().find(|r| r.kind == target) {
            if r.kind != kind && !r.may_overlap.contains(&kind) {
                r.may_overlap.push(kind);
            }
        }
    }
    regions.sort_by_key(|r| (r.chip, r.start, r.end));

    let bootloader_len = regions
        .iter()
        .find(|r| r.kind == RegionKind::Bootloader)
        .map(Region::len)
        .unwrap_or(0);
    let bootloader_update = match &spec.ota.bootloader_update {
        None => None,
        Some(bu) => {
            let loc = |name: &str, l: &LocationSpec| -> Result<FlashLocation, BoardError> {
                Ok(FlashLocation {
                    chip: l
                        .chip
                        .parse()
                        .map_err(|p| err(format!("ota.bootloader_update.{name}.chip"), p))?,
                    address: l.address,
                })
            };
            Some(BootloaderUpdate {
                staging: loc("staging", &bu.staging)?,
                backup: loc("backup", &bu.backup)?,
                len: bootloader_len,
            })
        }
    };
    let ota = OtaParams {
        max_binary_size: spec.ota.max_binary_size,
        chunk_size: spec.ota.chunk_size.unwrap_or(512),
        bootloader_update,
    };

    let mut module_versions = Vec::new();
    for (key, version) in &spec.defaults.module_versions {
        let field = format!("defaults.module_versions.{key}");
        let kind: RegionKind = key.parse().map_err(|p| err(field.clone(), p))?;
        let module = regions
            .iter()
            .find(|r| r.kind == kind)
            .and_then(|r| r.module)
            .ok_or_else(|| {
                err(
                    field.clone(),
                    format!("the board has no {kind} region holding a module"),
                )
            })?;
        module_versions.push(ModuleVersion {
            region: kind,
            module,
            version: *version,
        });
    }

    Ok(Board {
        display_name: spec.display_name.unwrap_or_else(|| spec.name.clone()),
        name: spec.name,
        platform_id: spec.platform_id,
        mcu,
        flash,
        regions,
        ota,
        defaults: Defaults {
            device_os: spec.defaults.device_os,
            module_versions,
        },
        source: file.to_string(),
    })
}

/// Resolve `start`/`end`/`size` into `[start, end)`. Errors are `(field, problem)`.
fn resolve_range(r: &RegionSpec) -> Result<(u32, u32), (&'static str, String)> {
    let checked_end = |start: u32, size: u32| {
        start.checked_add(size).ok_or((
            "size",
            format!("start {start:#X} + size {size:#X} overflows the 32-bit address space"),
        ))
    };
    match (r.start, r.end, r.size) {
        (Some(start), Some(end), None) => Ok((start, end)),
        (Some(start), None, Some(size)) => Ok((start, checked_end(start, size)?)),
        (None, Some(end), Some(size)) => {
            let start = end.checked_sub(size).ok_or((
                "size",
                format!("size {size:#X} is larger than end {end:#X}"),
            ))?;
            Ok((start, end))
        }
        (Some(start), Some(end), Some(size)) => {
            if u64::from(start) + u64::from(size) != u64::from(end) {
                Err((
                    "size",
                    format!("size {size:#X} disagrees with start {start:#X} and end {end:#X}"),
                ))
            } else {
                Ok((start, end))
            }
        }
        _ => Err((
            "start",
            "give two of start, end and size (end is exclusive)".to_string(),
        )),
    }
}

impl From<Chip> for crate::flash::ChipId {
    fn from(chip: Chip) -> Self {
        match chip {
            Chip::Internal => crate::flash::ChipId::Internal,
            Chip::External => crate::flash::ChipId::External,
        }
    }
}

impl Board {
    /// The simulated flash chip a board chip maps to.
    pub fn flash_chip(&self, chip: Chip) -> crate::flash::ChipId {
        chip.into()
    }

    /// Regions that hold a module (bootloader, radio stack, system part, user parts, KM0 parts).
    pub fn module_regions(&self) -> impl Iterator<Item = &Region> {
        self.regions.iter().filter(|r| r.module.is_some())
    }
}
