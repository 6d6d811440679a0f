//! Where a module goes on a board, and whether it may go there at all: the checks that the OTA
//! validation (`HAL_FLASH_OTA_Validate`), the bootloader before its copy (`FLASH_CopyMemory`'s
//! verification) and factory programming share (reference sections 2.5, 4 and 5.3).

use protocol::module::{decompress, Module, ModuleError, ModuleFlags, ModuleFunction, PREFIX_LEN};

use crate::board::{Board, Region, RegionKind};

/// Why a module cannot be placed on this board.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("module does not parse: {0}")]
    Unparsable(ModuleError),
    #[error("module CRC-32 {stored:#010x} does not match its contents ({computed:#010x})")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("module is for platform {found}, this device is platform {expected}")]
    WrongPlatform { expected: u16, found: u16 },
    #[error("no region on this board holds module function {function} index {index}")]
    NoRegion { function: u8, index: u8 },
    #[error("compressed module does not inflate: {0}")]
    BadCompression(ModuleError),
    #[error(
        "module {start:#x}..{end:#x} does not fit region {region} {region_start:#x}..{region_end:#x}"
    )]
    OutsideRegion {
        start: u32,
        end: u32,
        region: RegionKind,
        region_start: u32,
        region_end: u32,
    },
}

/// A module checked against a board: its parse, the bytes that go to flash, and the region.
#[derive(Debug, Clone)]
pub struct Placement<'b> {
    pub module: Module,
    /// Exactly what is written at the module's start address: the file as it is, its body
    /// only (DROP_MODULE_INFO), or the inflated data (COMPRESSED).
    pub image: Vec<u8>,
    pub region: &'b Region,
}

/// Checks `bytes` (one module file) against `board`: it parses, its CRC-32 is right, it is for
/// this platform (resources and assets carry none), a region holds its function and index, it
/// inflates to exactly its original size if compressed, and what it writes fits the region.
pub fn place<'b>(board: &'b Board, bytes: &[u8]) -> Result<Placement<'b>, PlacementError> {
    let module = Module::parse(bytes).map_err(PlacementError::Unparsable)?;
    if !module.crc_valid() {
        return Err(PlacementError::CrcMismatch {
            stored: module.stored_crc,
            computed: module.computed_crc,
        });
    }
    let p = &module.prefix;
    let function = u8::from(p.function);
    let platform_free = matches!(p.function, ModuleFunction::Resource | ModuleFunction::Asset);
    if !platform_free && p.platform_id != board.platform_id {
        return Err(PlacementError::WrongPlatform {
            expected: board.platform_id,
            found: p.platform_id,
        });
    }
    let region = board
        .region_for_module(function, p.index)
        .ok_or(PlacementError::NoRegion {
            function,
            index: p.index,
        })?;
    let image = if module.compressed_header.is_some() {
        decompress(bytes).map_err(PlacementError::BadCompression)?
    } else if p.flags.contains(ModuleFlags::DROP_MODULE_INFO) {
        bytes
            .get(module.prefix_offset + PREFIX_LEN..)
            .unwrap_or_default()
            .to_vec()
    } else {
        bytes.to_vec()
    };
    let start = p.start_address;
    let end = u64::from(start) + image.len() as u64;
    if start < region.start || end > u64::from(region.end) {
        return Err(PlacementError::OutsideRegion {
            start,
            end: end.min(u64::from(u32::MAX)) as u32,
            region: region.kind,
            region_start: region.start,
            region_end: region.end,
        });
    }
    Ok(Placement {
        module,
        image,
        region,
    })
}
