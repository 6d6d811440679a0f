//! DCT module slots: `platform_flash_modules_t`, the records through which a finished OTA
//! transfer asks the bootloader to copy a staged module (reference section 5.2).
//!
//! Device OS keeps five slots at DCT offset 2852 in `/sys/dct.bin` on LittleFS. The emulator
//! keeps the same 5 x 20 bytes, byte for byte, as one record of the power-safe [`Store`], under
//! [`MODULE_SLOTS_KEY`]: rewriting a slot rewrites the record, which the store makes atomic, as
//! LittleFS's copy-on-write makes the real DCT write atomic.
//!
//! ```text
//!  0      2    3    4            8            12           16    17   18      20
//!  +------+----+----+------------+------------+------------+-----+----+-------+
//!  |magic |src |dst | source addr| dest addr  | length     |flags|func| rsvd  |
//!  +------+----+----+------------+------------+------------+-----+----+-------+
//! ```
//! All fields little-endian.

use crate::flash::{ChipId, FlashArray};
use crate::store::{Store, StoreError};

/// Key of the slot table in the store (the DCT's `flash_modules[5]` at offset 2852).
pub const MODULE_SLOTS_KEY: &str = "dct/flash_modules";
/// Number of slots: slot 0 is the factory-reset slot, 1..=4 are pending updates.
pub const SLOT_COUNT: usize = 5;
/// Size of one `platform_flash_modules_t`.
pub const SLOT_LEN: usize = 20;

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..2;
    pub const SOURCE_DEVICE: usize = 2;
    pub const DEST_DEVICE: usize = 3;
    pub const SOURCE_ADDRESS: Range<usize> = 4..8;
    pub const DEST_ADDRESS: Range<usize> = 8..12;
    pub const LENGTH: Range<usize> = 12..16;
    pub const FLAGS: usize = 16;
    pub const FUNCTION: usize = 17;
    pub const RESERVED: Range<usize> = 18..20;
}

/// Slot magic values.
pub mod magic {
    /// A staged update waiting for the bootloader.
    pub const PENDING: u16 = 0xABCD;
    /// The factory-reset slot (slot 0).
    pub const FACTORY: u16 = 0x0FAC;
    /// A free slot (erased flash reads as this too).
    pub const FREE: u16 = 0xFFFF;
}

/// Slot flags (`MODULE_VERIFY_*`, `MODULE_DROP_MODULE_INFO`, ...).
pub mod slot_flags {
    pub const VERIFY_CRC: u8 = 0x02;
    pub const VERIFY_DEST_IS_START: u8 = 0x04;
    pub const VERIFY_FUNCTION: u8 = 0x08;
    pub const DROP_MODULE_INFO: u8 = 0x10;
    pub const COMPRESSED: u8 = 0x20;
    pub const ENCRYPTED: u8 = 0x40;
}

/// Which flash a slot's source or destination lives on (0 internal, 1 external QSPI).
pub fn device_code(chip: ChipId) -> u8 {
    match chip {
        ChipId::Internal => 0,
        ChipId::External => 1,
    }
}

/// The chip for a slot's device code, or `None` for a value Device OS does not define.
pub fn chip_for_code(code: u8) -> Option<ChipId> {
    match code {
        0 => Some(ChipId::Internal),
        1 => Some(ChipId::External),
        _ => None,
    }
}

/// One `platform_flash_modules_t`, as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleSlot {
    pub magic: u16,
    pub source_device: u8,
    pub dest_device: u8,
    pub source_address: u32,
    pub dest_address: u32,
    /// Module size including its CRC.
    pub length: u32,
    pub flags: u8,
    pub function: u8,
}

impl ModuleSlot {
    /// A free slot, as erased flash reads.
    pub const FREE: ModuleSlot = ModuleSlot {
        magic: magic::FREE,
        source_device: 0xFF,
        dest_device: 0xFF,
        source_address: 0xFFFF_FFFF,
        dest_address: 0xFFFF_FFFF,
        length: 0xFFFF_FFFF,
        flags: 0xFF,
        function: 0xFF,
    };

    pub fn is_pending(&self) -> bool {
        self.magic == magic::PENDING
    }

    /// Reads a slot from exactly [`SLOT_LEN`] bytes.
    pub fn parse(bytes: &[u8; SLOT_LEN]) -> ModuleSlot {
        let u32_at = |r: core::ops::Range<usize>| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[r]);
            u32::from_le_bytes(b)
        };
        ModuleSlot {
            magic: u16::from_le_bytes([bytes[field::MAGIC.start], bytes[field::MAGIC.start + 1]]),
            source_device: bytes[field::SOURCE_DEVICE],
            dest_device: bytes[field::DEST_DEVICE],
            source_address: u32_at(field::SOURCE_ADDRESS),
            dest_address: u32_at(field::DEST_ADDRESS),
            length: u32_at(field::LENGTH),
            flags: bytes[field::FLAGS],
            function: bytes[field::FUNCTION],
        }
    }

    /// Writes the slot's 20 bytes (the reserved field as zero, as Device OS does).
    pub fn emit(&self, out: &mut [u8; SLOT_LEN]) {
        out[field::MAGIC].copy_from_slice(&self.magic.to_le_bytes());
        out[field::SOURCE_DEVICE] = self.source_device;
        out[field::DEST_DEVICE] = self.dest_device;
        out[field::SOURCE_ADDRESS].copy_from_slice(&self.source_address.to_le_bytes());
        out[field::DEST_ADDRESS].copy_from_slice(&self.dest_address.to_le_bytes());
        out[field::LENGTH].copy_from_slice(&self.length.to_le_bytes());
        out[field::FLAGS] = self.flags;
        out[field::FUNCTION] = self.function;
        out[field::RESERVED].copy_from_slice(&[0, 0]);
    }
}

/// The five slots, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleSlots(pub [ModuleSlot; SLOT_COUNT]);

impl Default for ModuleSlots {
    fn default() -> Self {
        ModuleSlots([ModuleSlot::FREE; SLOT_COUNT])
    }
}

impl ModuleSlots {
    /// Reads the slot table from the store; a missing record means all slots are free.
    /// A record of the wrong size is reported as corrupt rather than guessed at.
    pub fn load(store: &Store, flash: &FlashArray) -> Result<ModuleSlots, StoreError> {
        let Some(bytes) = store.get(flash, MODULE_SLOTS_KEY)? else {
            return Ok(ModuleSlots::default());
        };
        if bytes.len() != SLOT_COUNT * SLOT_LEN {
            return Err(StoreError::Corrupt {
                at: 0,
                what: "DCT module slot table has the wrong size",
            });
        }
        let mut slots = ModuleSlots::default();
        for (slot, chunk) in slots.0.iter_mut().zip(bytes.chunks_exact(SLOT_LEN)) {
            let mut raw = [0u8; SLOT_LEN];
            raw.copy_from_slice(chunk);
            *slot = ModuleSlot::parse(&raw);
        }
        Ok(slots)
    }

    /// Writes the whole table as one atomic store record.
    pub fn save(&self, store: &mut Store, flash: &mut FlashArray) -> Result<(), StoreError> {
        let mut bytes = [0u8; SLOT_COUNT * SLOT_LEN];
        for (slot, chunk) in self.0.iter().zip(bytes.chunks_exact_mut(SLOT_LEN)) {
            let mut raw = [0u8; SLOT_LEN];
            slot.emit(&mut raw);
            chunk.copy_from_slice(&raw);
        }
        store.put(flash, MODULE_SLOTS_KEY, &bytes)
    }

    /// Indices (1..=4) of the pending update slots.
    pub fn pending(&self) -> impl Iterator<Item = usize> + '_ {
        (1..SLOT_COUNT).filter(|&i| self.0[i].is_pending())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_bytes_match_the_platform_flash_modules_layout() {
        let slot = ModuleSlot {
            magic: magic::PENDING,
            source_device: 1,
            dest_device: 0,
            source_address: 0x0024_C000,
            dest_address: 0x000B_4000,
            length: 0x1AD8,
            flags: slot_flags::VERIFY_CRC
                | slot_flags::VERIFY_DEST_IS_START
                | slot_flags::VERIFY_FUNCTION,
            function: 5,
        };
        let mut raw = [0u8; SLOT_LEN];
        slot.emit(&mut raw);
        assert_eq!(
            raw,
            [
                0xCD, 0xAB, 0x01, 0x00, 0x00, 0xC0, 0x24, 0x00, 0x00, 0x40, 0x0B, 0x00, 0xD8, 0x1A,
                0x00, 0x00, 0x0E, 0x05, 0x00, 0x00
            ]
        );
        assert_eq!(ModuleSlot::parse(&raw), slot);
    }

    #[test]
    fn erased_slot_reads_as_free() {
        let slot = ModuleSlot::parse(&[0xFF; SLOT_LEN]);
        assert_eq!(slot.magic, magic::FREE);
        assert!(!slot.is_pending());
    }
}
