//! Module binaries (reference section 4) against real Particle builds: the files in
//! `tests/vectors/modules/` (copied from `shared/vectors/modules`, Apache-2.0 test binaries of
//! particle-iot/binary-version-reader) and the values Particle's own parser reads from them.

use std::path::{Path, PathBuf};

use protocol::module::{
    clear_combined, combine, compress, crc_of_file, decompress, decompress_module, sha256_of_file,
    split_combined, split_combined_modules, Dependency, Module, ModuleError, ModuleFlags,
    ModuleFunction, ModuleParts, COMPRESSED_HEADER_LEN,
};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/modules");
const SHARED_VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/modules");

struct Vector {
    name: String,
    bytes: Vec<u8>,
    expected: serde_json::Value,
}

fn vectors() -> Vec<Vector> {
    let jsonl = std::fs::read_to_string(Path::new(VECTORS).join("expected.jsonl"))
        .expect("tests/vectors/modules/expected.jsonl is part of the repository");
    let list: Vec<Vector> = jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let expected: serde_json::Value = serde_json::from_str(line).unwrap();
            let name = expected["file"].as_str().unwrap().to_string();
            let bytes = std::fs::read(Path::new(VECTORS).join(&name)).unwrap();
            Vector {
                name,
                bytes,
                expected,
            }
        })
        .collect();
    assert_eq!(list.len(), 11, "every vector file is listed");
    list
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(VECTORS).join(name)).unwrap()
}

fn hex_u32(v: &serde_json::Value) -> u32 {
    let s = v.as_str().unwrap();
    u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

fn optional_u16(v: &serde_json::Value) -> Option<u16> {
    match v.as_i64().unwrap() {
        -1 => None,
        n => Some(u16::try_from(n).unwrap()),
    }
}

#[test]
fn every_vector_parses_to_the_values_particles_parser_reads() {
    for v in vectors() {
        let e = &v.expected;
        let name = &v.name;
        let m = Module::parse(&v.bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(
            m.file_len as u64,
            e["size"].as_u64().unwrap(),
            "{name} size"
        );
        assert_eq!(
            m.crc_valid(),
            e["crcValid"].as_bool().unwrap(),
            "{name} crcValid"
        );
        assert_eq!(
            hex::encode(m.stored_crc.to_be_bytes()),
            e["crc"].as_str().unwrap(),
            "{name} crc"
        );
        assert_eq!(m.prefix.start_address, hex_u32(&e["start"]), "{name} start");
        assert_eq!(m.prefix.end_address, hex_u32(&e["end"]), "{name} end");
        assert_eq!(
            u64::from(m.prefix.flags.bits()),
            e["flags"].as_u64().unwrap(),
            "{name} flags"
        );
        assert_eq!(
            u64::from(u8::from(m.prefix.function)),
            e["func"].as_u64().unwrap(),
            "{name} func"
        );
        assert_eq!(
            u64::from(m.prefix.index),
            e["index"].as_u64().unwrap(),
            "{name} index"
        );
        assert_eq!(
            u64::from(m.prefix.version),
            e["version"].as_u64().unwrap(),
            "{name} version"
        );
        assert_eq!(
            u64::from(m.prefix.platform_id),
            e["platform"].as_u64().unwrap(),
            "{name} platform"
        );
        let deps: Vec<u64> = e["deps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let [d1, d2] = m.prefix.dependencies;
        assert_eq!(
            deps,
            vec![
                u64::from(u8::from(d1.function)),
                u64::from(d1.index),
                u64::from(d1.version),
                u64::from(u8::from(d2.function)),
                u64::from(d2.index),
                u64::from(d2.version),
            ],
            "{name} deps"
        );
        assert_eq!(
            m.product_id(),
            optional_u16(&e["productId"]),
            "{name} productId"
        );
        assert_eq!(
            m.product_version(),
            optional_u16(&e["productVersion"]),
            "{name} productVersion"
        );
        assert_eq!(
            m.suffix_size() as u64,
            e["suffixSize"].as_u64().unwrap(),
            "{name} suffixSize"
        );
        assert_eq!(
            hex::encode(m.sha256()),
            e["sha"].as_str().unwrap(),
            "{name} sha"
        );
    }
}

#[test]
fn prefix_is_found_after_the_vector_table_or_image_header_of_real_files() {
    let offsets: Vec<(String, usize)> = vectors()
        .into_iter()
        .map(|v| {
            (
                v.name.clone(),
                Module::parse(&v.bytes).unwrap().prefix_offset,
            )
        })
        .collect();
    for (name, offset) in offsets {
        let expected = match name.as_str() {
            "tracker-bootloader@5.6.0.bin" | "tracker-system-part1@3.1.0-alpha.2.bin" => 0x200,
            "p2-bootloader@5.6.0.bin" => 0x20,
            _ => 0,
        };
        assert_eq!(offset, expected, "{name}");
    }
}

#[test]
fn stored_sha_and_crc_of_every_vector_are_those_of_the_file() {
    for v in vectors() {
        let m = Module::parse(&v.bytes).unwrap();
        assert_eq!(m.sha256(), sha256_of_file(&v.bytes), "{}", v.name);
        assert_eq!(m.stored_crc, crc_of_file(&v.bytes), "{}", v.name);
        m.verify_crc().unwrap();
    }
}

#[test]
fn every_vector_is_rebuilt_byte_for_byte_from_its_parsed_parts() {
    for v in vectors() {
        let m = Module::parse(&v.bytes).unwrap();
        let parts = ModuleParts::from_module(&m, &v.bytes);
        assert_eq!(parts.file_len(), v.bytes.len(), "{}", v.name);
        assert!(
            parts.emit(m.stored_crc).unwrap() == v.bytes,
            "{}: verbatim emit differs",
            v.name
        );
        assert!(
            parts.build().unwrap() == v.bytes,
            "{}: rebuild with fresh SHA/CRC differs",
            v.name
        );
    }
}

#[test]
fn extensions_of_real_files_are_read_in_order() {
    use protocol::module::Extension;
    let bytes = vector("tracker-user-part-extensions.bin");
    let m = Module::parse(&bytes).unwrap();
    let names: Vec<&str> = m
        .suffix
        .extensions
        .iter()
        .filter_map(|e| match e {
            Extension::AssetDependency { name, hash, .. } => {
                assert_eq!(hash.len(), 32);
                Some(name.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(names, ["btgap.a", "cat.jpg", "km4_image2_all.bin"]);
    assert!(m.suffix.extensions.last().unwrap().is_end());
    assert!(m.suffix.product_data.is_some());

    let bytes = vector("p2-user-part-prefix-extensions.bin");
    let m = Module::parse(&bytes).unwrap();
    assert_eq!(m.prefix_extensions.len(), 3);
    assert_eq!(m.prefix_extensions[2], Extension::End { len: 5 });
    assert_eq!(m.prefix.start_address % 8, 0);
    assert_eq!(
        m.suffix.extensions[0],
        Extension::DynamicLocation {
            module_start: m.prefix.start_address,
            dynalib_load: 0x085f_4088,
            dynalib_start: 0x023f_51f8,
        }
    );
    assert_eq!(m.suffix.extensions[1], Extension::product_data(32, 4));
}

#[test]
fn compressed_module_round_trips_to_identical_bytes() {
    for v in vectors() {
        let original = Module::parse(&v.bytes).unwrap();
        let compressed = compress(&v.bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let m = Module::parse(&compressed).unwrap();
        assert_eq!(m.prefix_offset, 0, "{}", v.name);
        assert!(
            m.prefix.flags.contains(ModuleFlags::COMPRESSED),
            "{}",
            v.name
        );
        assert_eq!(
            m.prefix.flags.bits() & !ModuleFlags::COMPRESSED.bits(),
            original.prefix.flags.bits(),
            "{}",
            v.name
        );
        assert_eq!(m.prefix.start_address, original.prefix.start_address);
        assert_eq!(
            m.prefix.end_address as usize,
            m.prefix.start_address as usize + compressed.len() - 4
        );
        assert!(m.crc_valid(), "{}", v.name);
        assert_eq!(m.sha256(), sha256_of_file(&compressed), "{}", v.name);
        assert_eq!(m.suffix.extensions, original.suffix.extensions);
        assert_eq!(m.product_id(), original.product_id());
        let header = m.compressed_header.unwrap();
        assert_eq!(header.method, 0);

        let inflated = decompress(&compressed).unwrap();
        assert_eq!(inflated.len(), header.original_size as usize, "{}", v.name);
        if original
            .prefix
            .flags
            .contains(ModuleFlags::DROP_MODULE_INFO)
        {
            assert!(
                inflated == v.bytes[original.body.clone()],
                "{}: body",
                v.name
            );
        } else {
            assert!(inflated == v.bytes, "{}: whole module", v.name);
        }
        assert!(
            decompress_module(&compressed).unwrap() == v.bytes,
            "{}",
            v.name
        );
    }
}

#[test]
fn compressing_twice_is_refused() {
    let compressed = compress(&vector("tracker-tinker@5.3.1.bin")).unwrap();
    assert_eq!(
        compress(&compressed).unwrap_err(),
        ModuleError::AlreadyCompressed
    );
    assert_eq!(
        decompress(&vector("tracker-tinker@5.3.1.bin")).unwrap_err(),
        ModuleError::NotCompressed
    );
}

/// Rewrites the original_size of a compressed module and fixes SHA/CRC, so that only the
/// size disagrees with the stream.
fn with_original_size(compressed: &[u8], size: u32) -> Vec<u8> {
    let m = Module::parse(compressed).unwrap();
    let mut bytes = compressed.to_vec();
    let at = m.compressed_header_range().start + 4;
    bytes[at..at + 4].copy_from_slice(&size.to_le_bytes());
    protocol::module::update_checksums(&mut bytes).unwrap();
    bytes
}

#[test]
fn decompressed_size_other_than_the_header_says_is_rejected() {
    let original = vector("tracker-tinker@5.3.1.bin");
    let compressed = compress(&original).unwrap();
    let len = original.len() as u32;
    assert_eq!(
        decompress(&with_original_size(&compressed, len + 1)).unwrap_err(),
        ModuleError::DecompressedSizeMismatch {
            expected: original.len() + 1,
            actual: original.len()
        }
    );
    assert!(matches!(
        decompress(&with_original_size(&compressed, len - 1)).unwrap_err(),
        ModuleError::DecompressedSizeMismatch { .. }
    ));
}

#[test]
fn corrupt_deflate_stream_is_rejected() {
    let compressed = compress(&vector("p2-tinker@5.3.1.bin")).unwrap();
    let m = Module::parse(&compressed).unwrap();
    assert_eq!(m.compressed_header_range().len(), COMPRESSED_HEADER_LEN);
    // Invalid block type 3 in the first block header.
    let mut bytes = compressed.clone();
    bytes[m.body.start] |= 0b110;
    protocol::module::update_checksums(&mut bytes).unwrap();
    assert!(matches!(
        decompress(&bytes).unwrap_err(),
        ModuleError::CorruptDeflateStream { .. }
    ));
}

#[test]
fn combine_then_split_gives_both_modules_back() {
    let system = vector("tracker-system-part1@3.1.0-alpha.2.bin");
    let app = vector("tracker-tinker@5.3.1.bin");
    let combined = combine(&[&system, &app]).unwrap();
    assert_eq!(combined.len(), system.len() + app.len());

    let ranges = split_combined(&combined).unwrap();
    assert_eq!(ranges, vec![0..system.len(), system.len()..combined.len()]);
    let first = Module::parse(&combined[ranges[0].clone()]).unwrap();
    assert!(first.prefix.flags.contains(ModuleFlags::COMBINED));
    assert!(first.crc_valid());
    assert_eq!(first.sha256(), sha256_of_file(&combined[ranges[0].clone()]));
    assert!(clear_combined(&combined[ranges[0].clone()]).unwrap() == system);
    assert!(combined[ranges[1].clone()] == app[..]);

    let modules = split_combined_modules(&combined).unwrap();
    assert!(modules == vec![system, app]);
}

#[test]
fn compressed_modules_combine_and_split() {
    let system = compress(&vector("tracker-system-part1@3.1.0-alpha.2.bin")).unwrap();
    let app = compress(&vector("tracker-tinker@5.3.1.bin")).unwrap();
    let combined = combine(&[&system, &app]).unwrap();
    let modules = split_combined_modules(&combined).unwrap();
    assert!(modules == vec![system, app]);
}

#[test]
fn more_than_two_combined_modules_are_rejected() {
    let a = vector("tracker-tinker@5.3.1.bin");
    assert!(matches!(
        combine(&[&a, &a, &a]).unwrap_err(),
        ModuleError::TooManyCombined { count: 3, max: 2 }
    ));
    // Build a three-module chain by hand: COMBINED on the first two.
    let ab = combine(&[&a, &a]).unwrap();
    let first = ab[..a.len()].to_vec();
    let mut three = first.clone();
    three.extend_from_slice(&first);
    three.extend_from_slice(&a);
    assert!(matches!(
        split_combined(&three).unwrap_err(),
        ModuleError::TooManyCombined { count: 3, max: 2 }
    ));
}

#[test]
fn combined_flag_must_match_what_follows() {
    let a = vector("tracker-tinker@5.3.1.bin");
    let mut two_plain = a.clone();
    two_plain.extend_from_slice(&a);
    assert_eq!(
        split_combined(&two_plain).unwrap_err(),
        ModuleError::CombinedFlagMissing {
            index: 0,
            offset: 0,
            trailing: a.len()
        }
    );
    let ab = combine(&[&a, &a]).unwrap();
    assert_eq!(
        split_combined(&ab[..a.len()]).unwrap_err(),
        ModuleError::CombinedFlagOnLast {
            index: 0,
            offset: 0
        }
    );
    assert!(matches!(
        combine(&[&ab[..a.len()], &a]).unwrap_err(),
        ModuleError::UnexpectedCombined { offset: 0 }
    ));
}

#[test]
fn module_for_wrong_length_is_rejected_naming_the_field() {
    let mut bytes = vector("tracker-tinker@5.3.1.bin");
    bytes.push(0);
    let err = Module::parse(&bytes).unwrap_err();
    assert_eq!(
        err,
        ModuleError::SizeMismatch {
            prefix_offset: 0,
            start: 0xb4000,
            end: 0xb5ad6,
            file_len: 6875
        }
    );
    let text = err.to_string();
    assert!(text.contains("module_end_address"), "{text}");
    assert!(text.contains("6875"), "{text}");

    let bootloader = vector("tracker-bootloader@5.6.0.bin");
    let err = Module::parse(&bootloader[..bootloader.len() - 1]).unwrap_err();
    assert!(
        matches!(
            err,
            ModuleError::SizeMismatch {
                prefix_offset: 0x200,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn module_with_a_wrong_crc_parses_but_fails_verification() {
    let mut bytes = vector("p2-user-part.bin");
    bytes[100] ^= 0xff;
    let m = Module::parse(&bytes).unwrap();
    assert!(!m.crc_valid());
    let err = m.verify_crc().unwrap_err();
    assert_eq!(
        err,
        ModuleError::CrcMismatch {
            stored: 0x0e3d_4f63,
            computed: m.computed_crc
        }
    );
    assert!(err.to_string().contains("0x0e3d4f63"));
}

#[test]
fn suffix_size_larger_than_the_module_is_rejected_naming_the_field() {
    let mut bytes = vector("080_user-part-xenon.bin");
    let len = bytes.len();
    bytes[len - 6..len - 4].copy_from_slice(&0xfff0u16.to_le_bytes());
    let err = Module::parse(&bytes).unwrap_err();
    assert!(
        matches!(err, ModuleError::SuffixTooLarge { size: 0xfff0, offset, .. } if offset == len - 6),
        "{err:?}"
    );
    bytes[len - 6..len - 4].copy_from_slice(&20u16.to_le_bytes());
    assert!(matches!(
        Module::parse(&bytes).unwrap_err(),
        ModuleError::SuffixTooSmall { size: 20, .. }
    ));
}

#[test]
fn every_error_reads_as_one_sentence() {
    let errors = [
        ModuleError::Truncated {
            what: "module prefix (module_info_t)",
            offset: 0,
            needed: 24,
            len: 3,
        },
        ModuleError::BadExtension {
            offset: 24,
            ty: 0x12,
            len: 900,
            reason: "length runs past the end of the extension area",
        },
        ModuleError::TooManyCombined { count: 3, max: 2 },
    ];
    for e in errors {
        let text = e.to_string();
        assert!(!text.contains('\n') && !text.ends_with('.'), "{text}");
    }
}

/// xorshift64*, seeded: failures print the seed and mutation.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Runs every entry point on `bytes`; only a panic fails.
fn exercise(bytes: &[u8]) {
    if let Ok(m) = Module::parse(bytes) {
        let _ = m.crc_valid();
        let _ = (m.product_id(), m.product_version(), m.suffix_size());
        let parts = ModuleParts::from_module(&m, bytes);
        let _ = parts.emit(m.stored_crc);
        if m.compressed_header.is_some() {
            let _ = decompress(bytes);
            let _ = decompress_module(bytes);
        } else if bytes.len() < 64 * 1024 {
            let _ = compress(bytes);
        }
    }
    let _ = split_combined(bytes);
}

#[test]
fn every_truncation_of_every_vector_is_rejected_without_panic() {
    for v in vectors() {
        for cut in 0..v.bytes.len() {
            let short = &v.bytes[..cut];
            assert!(Module::parse(short).is_err(), "{} cut at {cut}", v.name);
            let _ = split_combined(short);
        }
        for start in 1..1024.min(v.bytes.len()) {
            let _ = Module::parse(&v.bytes[start..]);
        }
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let seed = 0x5eed_f11e_u64;
    let mut rng = Rng(seed);
    let mut inputs: Vec<(String, Vec<u8>)> =
        vectors().into_iter().map(|v| (v.name, v.bytes)).collect();
    // Also mutate compressed and combined files, whose parsers do more work.
    let tinker = vector("tracker-tinker@5.3.1.bin");
    let p2 = vector("p2-user-part.bin");
    inputs.push(("compressed tinker".into(), compress(&tinker).unwrap()));
    inputs.push(("combined p2".into(), combine(&[&p2, &p2]).unwrap()));
    for (name, original) in &inputs {
        let len = original.len();
        for round in 0..64 {
            let mut bytes = original.clone();
            let flips = 1 + rng.below(4);
            let mut log = Vec::new();
            for _ in 0..flips {
                // Half of the flips land in the structured head (prefix, extensions, header)
                // or tail (suffix, CRC), half anywhere.
                let at = match rng.below(3) {
                    0 => rng.below(len.min(0x260)),
                    1 => len - 1 - rng.below(len.min(320)),
                    _ => rng.below(len),
                };
                let mask = 1u8 << rng.below(8);
                bytes[at] ^= mask;
                log.push((at, mask));
            }
            let outcome = std::panic::catch_unwind(|| exercise(&bytes));
            assert!(
                outcome.is_ok(),
                "panic on {name}, seed {seed:#x}, round {round}, flips {log:?}"
            );
            // Keep the CRC right half of the time so deeper code runs.
            if round % 2 == 0 {
                let _ = protocol::module::update_checksums(&mut bytes);
                let outcome = std::panic::catch_unwind(|| exercise(&bytes));
                assert!(outcome.is_ok(), "panic on {name} with fixed checksums, seed {seed:#x}, round {round}, flips {log:?}");
            }
        }
    }
}

#[test]
fn built_modules_match_the_shape_of_real_ones() {
    use protocol::module::{ModuleBuilder, SuffixStyle};
    // Rebuild tracker-tinker's envelope around its body: same prefix fields, same suffix.
    let real = vector("tracker-tinker@5.3.1.bin");
    let m = Module::parse(&real).unwrap();
    let body_without_filler = &real[m.body.start..m.body.end - 2];
    let built = ModuleBuilder::new(ModuleFunction::UserPart, 26)
        .index(2)
        .version(6)
        .start_address(0xb4000)
        .dependency(Dependency {
            function: ModuleFunction::SystemPart,
            index: 1,
            version: 5301,
        })
        .product(26, 3)
        .suffix_style(SuffixStyle::Nrf52840)
        .body(body_without_filler)
        .build()
        .unwrap();
    assert!(
        built == real,
        "builder output differs from Particle's build"
    );

    // And p2-tinker (rtl872x, fixed end, DYNAMIC_LOCATION + PRODUCT_DATA).
    let real = vector("p2-tinker@5.3.1.bin");
    let m = Module::parse(&real).unwrap();
    let built = ModuleBuilder::new(ModuleFunction::UserPart, 32)
        .index(1)
        .version(6)
        .fixed_end(0x0860_0000)
        .dependency(Dependency {
            function: ModuleFunction::SystemPart,
            index: 1,
            version: 5301,
        })
        .product(32, 4)
        .suffix_style(SuffixStyle::Rtl872x)
        .dynamic_location(0x085f_4088, 0x023f_51f8)
        .body(&real[m.body.clone()])
        .build()
        .unwrap();
    assert!(
        built == real,
        "builder output differs from Particle's build"
    );
}

#[test]
fn repository_copy_of_the_vectors_matches_the_shared_one() {
    let shared = PathBuf::from(SHARED_VECTORS);
    if !shared.is_dir() {
        // Clean clones (CI) have only the repository copy.
        return;
    }
    for v in vectors() {
        let theirs = std::fs::read(shared.join(&v.name)).unwrap();
        assert!(
            theirs == v.bytes,
            "{} differs from {}",
            v.name,
            shared.display()
        );
    }
    let ours = std::fs::read(Path::new(VECTORS).join("expected.jsonl")).unwrap();
    let theirs = std::fs::read(shared.join("expected.jsonl")).unwrap();
    assert_eq!(ours, theirs);
}
