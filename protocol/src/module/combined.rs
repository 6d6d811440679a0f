//! Combined module files (reference section 4.6): complete modules concatenated, every one but
//! the last with flag COMBINED and its SHA-256 / CRC-32 recomputed. Device OS takes at most 2.

use core::ops::Range;

use super::error::{ModuleError, Result};
use super::prefix::{ModuleFlags, Prefix};
use super::{crc_of_file, find_prefix, update_checksums, Module, CRC_LEN};

/// Device OS's `MAX_COMBINED_MODULE_COUNT`.
pub const MAX_COMBINED_MODULES: usize = 2;

/// Splits a combined file into the byte ranges of its modules (a plain module gives one range).
/// Each range is a complete module that [`Module::parse`] accepts; every module but the last
/// must have COMBINED and the last must not; at most [`MAX_COMBINED_MODULES`].
pub fn split_combined(data: &[u8]) -> Result<Vec<Range<usize>>> {
    if data.is_empty() {
        return Err(ModuleError::NoModules);
    }
    let mut ranges = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = data.get(pos..).unwrap_or(&[]);
        let len = leading_module_len(rest).map_err(|e| shift(e, pos))?;
        let module_bytes = rest.get(..len).unwrap_or(&[]);
        let module = Module::parse(module_bytes).map_err(|e| shift(e, pos))?;
        let trailing = rest.len() - len;
        let combined = module.prefix.flags.contains(ModuleFlags::COMBINED);
        let index = ranges.len();
        if trailing == 0 && combined {
            return Err(ModuleError::CombinedFlagOnLast { index, offset: pos });
        }
        if trailing > 0 && !combined {
            return Err(ModuleError::CombinedFlagMissing {
                index,
                offset: pos,
                trailing,
            });
        }
        ranges.push(pos..pos + len);
        pos += len;
    }
    if ranges.len() > MAX_COMBINED_MODULES {
        return Err(ModuleError::TooManyCombined {
            count: ranges.len(),
            max: MAX_COMBINED_MODULES,
        });
    }
    Ok(ranges)
}

/// Like [`split_combined`], returning each module as its own file with COMBINED cleared and
/// SHA-256 / CRC-32 recomputed (what Particle's `splitCombinedModules` gives).
pub fn split_combined_modules(data: &[u8]) -> Result<Vec<Vec<u8>>> {
    split_combined(data)?
        .into_iter()
        .map(|r| clear_combined(data.get(r).unwrap_or(&[])))
        .collect()
}

/// Concatenates complete modules into one combined file, setting COMBINED on all but the last
/// and recomputing their SHA-256 and CRC-32. One module is returned unchanged.
pub fn combine(modules: &[&[u8]]) -> Result<Vec<u8>> {
    if modules.is_empty() {
        return Err(ModuleError::NoModules);
    }
    if modules.len() > MAX_COMBINED_MODULES {
        return Err(ModuleError::TooManyCombined {
            count: modules.len(),
            max: MAX_COMBINED_MODULES,
        });
    }
    let mut out = Vec::with_capacity(modules.iter().map(|m| m.len()).sum());
    for (i, bytes) in modules.iter().enumerate() {
        let start = out.len();
        let module = Module::parse(bytes).map_err(|e| shift(e, start))?;
        if module.prefix.flags.contains(ModuleFlags::COMBINED) {
            return Err(ModuleError::UnexpectedCombined { offset: start });
        }
        out.extend_from_slice(bytes);
        if i + 1 < modules.len() {
            let mut prefix = module.prefix;
            prefix.flags.insert(ModuleFlags::COMBINED);
            let part = out.get_mut(start..).unwrap_or(&mut []);
            rewrite_prefix(part, module.prefix_offset, &prefix)?;
        }
    }
    Ok(out)
}

/// A copy of `module` with COMBINED cleared and SHA-256 / CRC-32 recomputed.
pub fn clear_combined(module: &[u8]) -> Result<Vec<u8>> {
    let parsed = Module::parse(module)?;
    let mut out = module.to_vec();
    if parsed.prefix.flags.contains(ModuleFlags::COMBINED) {
        let mut prefix = parsed.prefix;
        prefix.flags.remove(ModuleFlags::COMBINED);
        rewrite_prefix(&mut out, parsed.prefix_offset, &prefix)?;
    }
    Ok(out)
}

fn rewrite_prefix(module: &mut [u8], prefix_offset: usize, prefix: &Prefix) -> Result<()> {
    let len = module.len();
    let at = module
        .get_mut(prefix_offset..)
        .ok_or(ModuleError::Truncated {
            what: "module prefix (module_info_t)",
            offset: prefix_offset,
            needed: super::PREFIX_LEN,
            len,
        })?;
    prefix.emit(at)?;
    update_checksums(module)
}

/// Length of the module at the start of `data` (which may be followed by more modules).
/// Among the plausible prefix offsets that fit, one whose CRC checks out is preferred.
fn leading_module_len(data: &[u8]) -> Result<usize> {
    let declared = |offset: usize| {
        data.get(offset..)
            .and_then(|d| Prefix::parse(d).ok())
            .and_then(|p| p.declared_len())
    };
    let crc_ok = |len: usize| {
        let Some(m) = data.get(..len) else {
            return false;
        };
        let stored = m.get(len.saturating_sub(CRC_LEN)..).unwrap_or(&[]);
        stored == crc_of_file(m).to_be_bytes()
    };
    let fits = |len: usize| len <= data.len();
    find_prefix(data, |len| fits(len) && crc_ok(len))
        .or_else(|| find_prefix(data, fits))
        .and_then(declared)
        .ok_or_else(|| super::size_error(data))
}

/// Moves the byte offsets of an error about a module at `base` to file offsets.
fn shift(err: ModuleError, base: usize) -> ModuleError {
    if base == 0 {
        return err;
    }
    match err {
        ModuleError::Truncated {
            what,
            offset,
            needed,
            len,
        } => ModuleError::Truncated {
            what,
            offset: offset + base,
            needed,
            len: len + base,
        },
        ModuleError::SizeMismatch {
            prefix_offset,
            start,
            end,
            file_len,
        } => ModuleError::SizeMismatch {
            prefix_offset: prefix_offset + base,
            start,
            end,
            file_len,
        },
        ModuleError::BadExtension {
            offset,
            ty,
            len,
            reason,
        } => ModuleError::BadExtension {
            offset: offset + base,
            ty,
            len,
            reason,
        },
        ModuleError::MissingEndExtension { offset } => ModuleError::MissingEndExtension {
            offset: offset + base,
        },
        ModuleError::SuffixTooSmall { size, offset } => ModuleError::SuffixTooSmall {
            size,
            offset: offset + base,
        },
        ModuleError::SuffixTooLarge {
            size,
            offset,
            available,
        } => ModuleError::SuffixTooLarge {
            size,
            offset: offset + base,
            available,
        },
        ModuleError::BadSuffixLayout { offset, leftover } => ModuleError::BadSuffixLayout {
            offset: offset + base,
            leftover,
        },
        ModuleError::BadCompressionHeader {
            offset,
            field,
            value,
        } => ModuleError::BadCompressionHeader {
            offset: offset + base,
            field,
            value,
        },
        other => other,
    }
}
