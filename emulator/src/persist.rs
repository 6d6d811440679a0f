//! Saving a device's flash to files and loading it back, so an emulated device survives a
//! process restart (a restart is a power cycle: only flash is kept, never RAM).
//!
//! # File format (version 1), one file per chip: `flash-internal.bin`, `flash-external.bin`
//!
//! All integers little-endian.
//!
//! | bytes | field |
//! |-------|-------|
//! | 8     | magic `HILFLASH` |
//! | 4     | format version (1) |
//! | 1     | chip: 0 internal, 1 external |
//! | 3     | zero |
//! | 4×4   | geometry: base, size, sector size, program unit |
//! | 4     | sector count |
//! | ...   | per sector: one byte, 0 = erased (nothing follows) or 1 = data (sector size bytes follow) |
//! | 4     | CRC-32 (IEEE) of every byte before it |
//!
//! Files are written to a temporary name and renamed, so a crash mid-save leaves the previous
//! image. A truncated, corrupt or foreign file is an error naming the file, never a panic.

use std::fs;
use std::path::{Path, PathBuf};

use crate::flash::{ChipId, FlashArray, FlashError, FlashGeometry};

const MAGIC: &[u8; 8] = b"HILFLASH";
/// The format version written by [`save`].
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 16 + 4;

/// Why an image could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("{}: {source}", path.display())]
    Flash { path: PathBuf, source: FlashError },
}

/// The file that holds `chip` in `dir`.
pub fn chip_path(dir: &Path, chip: ChipId) -> PathBuf {
    dir.join(format!("flash-{chip}.bin"))
}

fn chip_code(chip: ChipId) -> u8 {
    match chip {
        ChipId::Internal => 0,
        ChipId::External => 1,
    }
}

/// Whether `dir` holds a saved image (a file for at least one chip).
pub fn exists(dir: &Path) -> bool {
    [ChipId::Internal, ChipId::External]
        .iter()
        .any(|c| chip_path(dir, *c).exists())
}

/// The bytes of one chip's file.
pub fn encode_chip(flash: &FlashArray, chip: ChipId) -> Result<Vec<u8>, FlashError> {
    let g = flash
        .geometry(chip)
        .ok_or(FlashError::NoSuchChip { chip })?;
    let mut out = Vec::with_capacity(HEADER_LEN + 64 * 1024);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[chip_code(chip), 0, 0, 0]);
    for v in [g.base, g.size, g.sector_size, g.program_unit] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&g.sector_count().to_le_bytes());
    for n in 0..g.sector_count() {
        let addr = g.base + n * g.sector_size;
        if flash.is_erased(chip, addr, g.sector_size)? {
            out.push(0);
        } else {
            out.push(1);
            out.extend_from_slice(&flash.read_vec(chip, addr, g.sector_size as usize)?);
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Saves every chip of `flash` into `dir` (created if missing).
pub fn save(flash: &FlashArray, dir: &Path) -> Result<(), PersistError> {
    fs::create_dir_all(dir).map_err(|source| PersistError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for (chip, _) in flash.chips() {
        let path = chip_path(dir, chip);
        let bytes = encode_chip(flash, chip).map_err(|source| PersistError::Flash {
            path: path.clone(),
            source,
        })?;
        let tmp = path.with_extension("bin.tmp");
        let io = |source| PersistError::Io {
            path: tmp.clone(),
            source,
        };
        fs::write(&tmp, &bytes).map_err(io)?;
        fs::rename(&tmp, &path).map_err(|source| PersistError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// One chip's saved contents: its geometry and, per sector, its data (`None`: erased).
pub struct ChipImage {
    pub chip: ChipId,
    pub geometry: FlashGeometry,
    pub sectors: Vec<Option<Vec<u8>>>,
}

/// Parses one chip's file; `path` only names it in errors.
pub fn decode_chip(bytes: &[u8], path: &Path) -> Result<ChipImage, PersistError> {
    let corrupt = |what: &str| PersistError::Corrupt {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    if bytes.len() < HEADER_LEN + 4 {
        return Err(corrupt("truncated (shorter than the header)"));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("not a flash image (bad magic)"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let mut r = Reader { data: body, pos: 8 };
    let version = r.u32().ok_or_else(|| corrupt("truncated"))?;
    if version != FORMAT_VERSION {
        return Err(corrupt(&format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        )));
    }
    if crc32fast::hash(body) != stored {
        return Err(corrupt("CRC mismatch (truncated or corrupted)"));
    }
    let chip = match r.take(4).ok_or_else(|| corrupt("truncated"))?[0] {
        0 => ChipId::Internal,
        1 => ChipId::External,
        n => return Err(corrupt(&format!("unknown chip code {n}"))),
    };
    let mut g = [0u32; 4];
    for v in &mut g {
        *v = r.u32().ok_or_else(|| corrupt("truncated"))?;
    }
    let geometry = FlashGeometry {
        base: g[0],
        size: g[1],
        sector_size: g[2],
        program_unit: g[3],
    };
    let count = r.u32().ok_or_else(|| corrupt("truncated"))?;
    if geometry.sector_size == 0 || count != geometry.sector_count() {
        return Err(corrupt("sector count does not match the geometry"));
    }
    let mut sectors = Vec::new();
    for n in 0..count {
        match r.take(1).ok_or_else(|| corrupt("truncated sector list"))?[0] {
            0 => sectors.push(None),
            1 => {
                let data = r
                    .take(geometry.sector_size as usize)
                    .ok_or_else(|| corrupt(&format!("sector {n} truncated")))?;
                sectors.push(Some(data.to_vec()));
            }
            f => return Err(corrupt(&format!("sector {n}: bad flag {f}"))),
        }
    }
    if r.pos != body.len() {
        return Err(corrupt("trailing bytes after the last sector"));
    }
    Ok(ChipImage {
        chip,
        geometry,
        sectors,
    })
}

/// Loads the image saved in `dir` into `flash`, whose chips must have the saved geometry
/// (the same board). Every sector of `flash` ends up as saved.
pub fn load_into(flash: &mut FlashArray, dir: &Path) -> Result<(), PersistError> {
    let chips: Vec<(ChipId, FlashGeometry)> = flash.chips().collect();
    for (chip, geometry) in chips {
        let path = chip_path(dir, chip);
        let bytes = fs::read(&path).map_err(|source| PersistError::Io {
            path: path.clone(),
            source,
        })?;
        let image = decode_chip(&bytes, &path)?;
        if image.chip != chip || image.geometry != geometry {
            return Err(PersistError::Corrupt {
                path,
                what: format!(
                    "saved for {} flash ({}), the board has {chip} flash ({geometry}) \
                     (another board?)",
                    image.chip, image.geometry
                ),
            });
        }
        let fe = |source| PersistError::Flash {
            path: path.clone(),
            source,
        };
        for (n, sector) in image.sectors.iter().enumerate() {
            let addr = geometry.base + n as u32 * geometry.sector_size;
            if !flash
                .is_erased(chip, addr, geometry.sector_size)
                .map_err(fe)?
            {
                flash.erase_sector(chip, addr).map_err(fe)?;
            }
            if let Some(data) = sector {
                flash.program(chip, addr, data).map_err(fe)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flash() -> FlashArray {
        let g = FlashGeometry {
            base: 0x1000,
            size: 4 * 256,
            sector_size: 256,
            program_unit: 4,
        };
        FlashArray::new(&[(ChipId::Internal, g), (ChipId::External, g)], 1).unwrap()
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hil-persist-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_saved_image_loads_back_identical() {
        let dir = tempdir("roundtrip");
        let mut a = flash();
        a.program(ChipId::Internal, 0x1100, &[1, 2, 3, 4]).unwrap();
        a.program(ChipId::External, 0x1000, &[0; 8]).unwrap();
        save(&a, &dir).unwrap();
        let mut b = flash();
        b.program(ChipId::Internal, 0x1200, &[9; 4]).unwrap();
        load_into(&mut b, &dir).unwrap();
        for chip in [ChipId::Internal, ChipId::External] {
            assert_eq!(
                a.read_vec(chip, 0x1000, 1024).unwrap(),
                b.read_vec(chip, 0x1000, 1024).unwrap()
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncated_or_corrupt_files_are_errors_naming_the_file() {
        let dir = tempdir("corrupt");
        let mut a = flash();
        a.program(ChipId::Internal, 0x1100, &[1, 2, 3, 4]).unwrap();
        save(&a, &dir).unwrap();
        let path = chip_path(&dir, ChipId::Internal);
        let good = fs::read(&path).unwrap();
        for n in [0, 5, HEADER_LEN, good.len() - 1] {
            fs::write(&path, &good[..n]).unwrap();
            let e = load_into(&mut flash(), &dir).unwrap_err().to_string();
            assert!(e.contains("flash-internal.bin"), "{e}");
        }
        let mut bad = good.clone();
        bad[HEADER_LEN + 10] ^= 1;
        fs::write(&path, &bad).unwrap();
        let e = load_into(&mut flash(), &dir).unwrap_err().to_string();
        assert!(e.contains("CRC"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
