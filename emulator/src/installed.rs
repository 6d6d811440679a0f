//! Finding and checking the modules that sit in a board's flash regions: what Device OS's
//! `HAL_Core_Validate_Modules` / `hal_user_module_get_descriptor` see at boot (reference 4.4,
//! 5.1 and 5.5).
//!
//! A region anchored at its start holds a module whose prefix is at the region start, or 0x200
//! after it when an nRF52840 vector table comes first, or 0x20 after it for the rtl872x
//! bootloader's image header (reference 2.5, `fetchModules`). A region anchored at its end (the
//! rtl872x user part grows down from a fixed end) is found from its suffix: the
//! DYNAMIC_LOCATION extension names where the module starts.

use protocol::module::{Extension, Module, ModuleFlags, Prefix, Suffix, PREFIX_LEN};

use crate::board::{Anchor, Board, Region};
use crate::flash::{FlashArray, FlashError};

impl RegionContent {
    /// What `bytes` (a whole module read from flash, meant to run at `start`) amount to. A parse
    /// failure is reported at `read_at`, where the bytes were read.
    pub fn from_bytes(start: u32, read_at: u32, bytes: Vec<u8>) -> RegionContent {
        match Module::parse(&bytes) {
            Ok(module) => RegionContent::Module(FoundModule {
                start,
                crc_valid: module.crc_valid(),
                prefix: module.prefix,
                product_version: module.product_version(),
                sha256: module.sha256(),
                bytes,
            }),
            Err(e) => RegionContent::Unreadable {
                start: read_at,
                problem: e.to_string(),
            },
        }
    }
}

/// Offsets from a module's start at which its prefix may sit.
pub const PREFIX_OFFSETS: [u32; 3] = [0, 0x200, 0x20];

/// A module found in a region, with everything boot validation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundModule {
    /// Address of the module's first byte (`module_start_address`).
    pub start: u32,
    /// The module's bytes, from its start through its CRC.
    pub bytes: Vec<u8>,
    pub prefix: Prefix,
    pub crc_valid: bool,
    pub product_version: Option<u16>,
    pub sha256: [u8; 32],
}

/// What a region holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionContent {
    /// No module prefix that fits the region (erased, or never written).
    Empty,
    /// A prefix was found but the module around it does not parse.
    Unreadable {
        start: u32,
        problem: String,
    },
    Module(FoundModule),
}

fn u32_le(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Bytes read at a region start to find a prefix: enough for the furthest prefix offset.
fn prefix_window(region: &Region) -> usize {
    (0x200 + PREFIX_LEN).min(region.len() as usize)
}

/// Where the module in `region` starts, if a plausible prefix is there.
fn locate(board: &Board, flash: &FlashArray, region: &Region) -> Result<Option<u32>, FlashError> {
    match region.anchor {
        Anchor::Start => {
            let window = flash.read_vec(
                board.flash_chip(region.chip),
                region.start,
                prefix_window(region),
            )?;
            for off in PREFIX_OFFSETS {
                let (Some(start), Some(end)) = (
                    u32_le(&window, off as usize),
                    u32_le(&window, off as usize + 4),
                ) else {
                    continue;
                };
                if start == region.start && end > start && end.saturating_add(4) <= region.end {
                    return Ok(Some(start));
                }
            }
            Ok(None)
        }
        Anchor::End => {
            // The suffix ends at the region end: CRC (4) then suffix size (2) just before it.
            let chip = board.flash_chip(region.chip);
            let tail = flash.read_vec(chip, region.end - 6, 6)?;
            let suffix_size = u16::from_le_bytes([tail[0], tail[1]]) as u32;
            if !(36..=0x1000).contains(&suffix_size) {
                return Ok(None);
            }
            let suffix =
                flash.read_vec(chip, region.end - 4 - suffix_size, suffix_size as usize)?;
            let Ok(parsed) = Suffix::parse(&suffix, 0) else {
                return Ok(None);
            };
            for ext in parsed.extensions {
                if let Extension::DynamicLocation { module_start, .. } = ext {
                    if module_start >= region.start && module_start < region.end {
                        return Ok(Some(module_start));
                    }
                }
            }
            Ok(None)
        }
    }
}

/// Reads what `region` holds. Only a power loss is an error; everything else is content.
pub fn read_region(
    board: &Board,
    flash: &FlashArray,
    region: &Region,
) -> Result<RegionContent, FlashError> {
    let Some(start) = locate(board, flash, region)? else {
        return Ok(RegionContent::Empty);
    };
    let chip = board.flash_chip(region.chip);
    // Find the prefix again to learn the size.
    let window = flash.read_vec(
        chip,
        start,
        (0x200 + PREFIX_LEN).min((region.end - start) as usize),
    )?;
    let mut end = None;
    for off in PREFIX_OFFSETS {
        if let (Some(s), Some(e)) = (
            u32_le(&window, off as usize),
            u32_le(&window, off as usize + 4),
        ) {
            if s == start && e > s && e.saturating_add(4) <= region.end {
                end = Some(e);
                break;
            }
        }
    }
    let Some(end) = end else {
        return Ok(RegionContent::Unreadable {
            start,
            problem: "no module prefix names the start its suffix gives".into(),
        });
    };
    let bytes = flash.read_vec(chip, start, (end - start + 4) as usize)?;
    Ok(RegionContent::from_bytes(start, start, bytes))
}

/// Whether a module with these flags keeps its prefix at the destination.
pub fn keeps_module_info(flags: ModuleFlags) -> bool {
    !flags.contains(ModuleFlags::DROP_MODULE_INFO)
}
