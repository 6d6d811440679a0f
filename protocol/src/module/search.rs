//! Where Particle's own module parser (binary-version-reader's `HalModuleParser`) finds the
//! module prefix of a file, for every platform it knows, including retired Gen 1 / Gen 2 and
//! third-party ones. [`Module::parse`](super::Module::parse) only tries the offsets the
//! platforms this project emulates use; this search is what `hil module inspect` falls back to,
//! so a Photon system part or a Core bootloader reads the way Particle's tools read it.
//!
//! The rules, in our words:
//!
//! * A candidate offset gets a score. It scores 0 (rejected) unless 24 prefix bytes are there,
//!   end address > start address, the file holds at least `end - start + 4` bytes, the module
//!   function is not None and each empty dependency (function None) has index and version 0.
//!   A candidate that gets that far scores 1, plus one point each for: a known platform id, a
//!   known module function, a known function in each of the two dependencies, a file length of
//!   exactly `end - start + 4`, and flags with no unknown bit. 7 points is a pass.
//! * The offsets of [`PARTICLE_PREFERRED_OFFSETS`] are tried first (0; 0x200 after the Gen 3
//!   nRF52840 vector table; 0x184 after the Gen 2 STM32F2 one; 0xC0 for Bluz; 0x10C for the
//!   Core), then every 4-aligned offset from 4 up to 8 KiB (and up to the file length less a
//!   prefix, the 36-byte base suffix and the CRC). The first pass wins.
//! * When nothing passes Particle's parser still reads the best-scoring offset (0 when none
//!   scored); we report that no prefix was found instead, with the offsets tried and the best
//!   candidate, because every field read from there would be noise.

use super::prefix::{ModuleFunction, Prefix, PREFIX_LEN};
use super::suffix::BASE_SUFFIX_LEN;
use super::CRC_LEN;

/// Offsets Particle's parser tries before scanning: none, Gen 3 (nRF52840 vector table),
/// Gen 2 (STM32F2 vector table), Bluz, Core.
pub const PARTICLE_PREFERRED_OFFSETS: [usize; 5] = [0, 0x200, 0x184, 0xC0, 0x10C];

/// Particle's parser scans no further than this for a prefix.
pub const MAX_PREFIX_SEARCH_OFFSET: usize = 8 * 1024;

/// Score of a prefix that passes every check.
pub const PASSING_SCORE: u8 = 7;

/// Platform ids Particle's parser knows (`@particle/device-constants`, every platform of a
/// generation above 0), with their names. UNCONFIRMED: written from the published platform
/// list, not read from the package itself; a missing id only costs a candidate one point.
pub const KNOWN_PLATFORMS: [(u16, &str); 21] = [
    (0, "core"),
    (6, "photon"),
    (8, "p1"),
    (10, "electron"),
    (12, "argon"),
    (13, "boron"),
    (14, "xenon"),
    (15, "esomx"),
    (22, "asom"),
    (23, "bsom"),
    (24, "xsom"),
    (25, "b5som"),
    (26, "tracker"),
    (28, "trackerm"),
    (32, "p2"),
    (35, "msom"),
    (37, "electron2"),
    (38, "tachyon"),
    (60000, "newhal"),
    (88, "duo"),
    (103, "bluz"),
];

/// The name of a platform id Particle's tools know.
pub fn platform_name(id: u16) -> Option<&'static str> {
    KNOWN_PLATFORMS
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, name)| *name)
}

/// The score Particle's parser gives a prefix candidate at `offset` of `data` (0 to
/// [`PASSING_SCORE`]).
pub fn prefix_score(data: &[u8], offset: usize) -> u8 {
    let Some(prefix) = data
        .get(offset..)
        .filter(|rest| rest.len() >= PREFIX_LEN)
        .and_then(|rest| Prefix::parse(rest).ok())
    else {
        return 0;
    };
    let Some(expected) = prefix.declared_len() else {
        return 0;
    };
    if data.len() < expected || !prefix.is_plausible() {
        return 0;
    }
    let known = |f: ModuleFunction| f.is_known();
    let points = [
        platform_name(prefix.platform_id).is_some(),
        known(prefix.function),
        known(prefix.dependencies[0].function),
        known(prefix.dependencies[1].function),
        data.len() == expected,
        prefix.flags.is_known(),
    ];
    1 + points.iter().filter(|&&p| p).count() as u8
}

/// The outcome of [`search_prefix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixSearch {
    /// A prefix passed every check here.
    Found { offset: usize },
    /// Nothing passed. `preferred` were tried, then every 4-aligned offset from 4 to
    /// `scanned_to` (inclusive; none when the file is too short to scan). `best` is the
    /// highest-scoring candidate, if any scored.
    NotFound {
        preferred: Vec<usize>,
        scanned_to: Option<usize>,
        best: Option<(usize, u8)>,
    },
}

impl PrefixSearch {
    /// One sentence naming the offsets tried, for a person.
    pub fn describe_not_found(&self) -> Option<String> {
        let PrefixSearch::NotFound {
            preferred,
            scanned_to,
            best,
        } = self
        else {
            return None;
        };
        let list: Vec<String> = preferred.iter().map(|o| format!("{o:#x}")).collect();
        let mut text = format!(
            "no module prefix found: tried byte offsets {}",
            list.join(", ")
        );
        match scanned_to {
            Some(end) => text.push_str(&format!(
                " and every 4-byte-aligned offset from 0x4 to {end:#x}"
            )),
            None => text.push_str(" (the file is too short to scan further)"),
        }
        match best {
            Some((offset, score)) => text.push_str(&format!(
                "; the best candidate, at {offset:#x}, passes {} of {PASSING_SCORE} checks",
                score
            )),
            None => text.push_str("; none of them looks like a prefix"),
        }
        Some(text)
    }
}

/// Finds the module prefix of `data` as Particle's parser does (see the module docs).
pub fn search_prefix(data: &[u8]) -> PrefixSearch {
    let mut best: Option<(usize, u8)> = None;
    let mut consider = |offset: usize| -> bool {
        let score = prefix_score(data, offset);
        if score >= PASSING_SCORE {
            return true;
        }
        if score > 0 && best.is_none_or(|(_, b)| score > b) {
            best = Some((offset, score));
        }
        false
    };
    for offset in PARTICLE_PREFERRED_OFFSETS {
        if consider(offset) {
            return PrefixSearch::Found { offset };
        }
    }
    let last = data
        .len()
        .checked_sub(BASE_SUFFIX_LEN + PREFIX_LEN + CRC_LEN)
        .map(|l| l.min(MAX_PREFIX_SEARCH_OFFSET));
    if let Some(last) = last.filter(|&l| l >= 4) {
        for offset in (4..=last).step_by(4) {
            if PARTICLE_PREFERRED_OFFSETS.contains(&offset) {
                continue;
            }
            if consider(offset) {
                return PrefixSearch::Found { offset };
            }
        }
    }
    PrefixSearch::NotFound {
        preferred: PARTICLE_PREFERRED_OFFSETS.to_vec(),
        scanned_to: last.filter(|&l| l >= 4).map(|l| l & !3),
        best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::{ModuleBuilder, ModuleFunction};

    fn module_with_header(header: usize, platform: u16) -> Vec<u8> {
        let mut b = ModuleBuilder::new(ModuleFunction::SystemPart, platform)
            .index(1)
            .version(1102)
            .start_address(0x0802_0000)
            .body(vec![0x5a; 4000]);
        if header > 0 {
            b = b.vector_table(header);
        }
        b.build().unwrap()
    }

    #[test]
    fn a_gen2_system_part_is_found_after_its_stm32_vector_table() {
        let m = module_with_header(0x184, 6);
        assert_eq!(search_prefix(&m), PrefixSearch::Found { offset: 0x184 });
    }

    #[test]
    fn a_core_module_is_found_at_0x10c() {
        let m = module_with_header(0x10C, 0);
        assert_eq!(search_prefix(&m), PrefixSearch::Found { offset: 0x10C });
    }

    #[test]
    fn an_unusual_offset_is_found_by_the_scan() {
        let m = module_with_header(0x400, 13);
        assert_eq!(search_prefix(&m), PrefixSearch::Found { offset: 0x400 });
    }

    #[test]
    fn a_file_of_noise_names_every_offset_tried() {
        let noise = vec![0xA5u8; 300];
        let found = search_prefix(&noise);
        let text = found.describe_not_found().unwrap();
        assert!(text.contains("0x0, 0x200, 0x184, 0xc0, 0x10c"), "{text}");
        assert!(text.contains("0x4 to 0xec"), "{text}");
    }

    #[test]
    fn an_empty_file_is_not_found_without_a_scan() {
        let found = search_prefix(&[]);
        assert!(matches!(
            found,
            PrefixSearch::NotFound {
                scanned_to: None,
                best: None,
                ..
            }
        ));
    }
}
