//! Built-in board definitions match reference section 5.1, and malformed board files give errors
//! that name the file and the field.

use emulator::board::{
    Anchor, Board, BoardError, Chip, ChipGeometry, McuFamily, ModuleSlotId, RegionKind,
};

fn board(name: &str) -> Board {
    Board::builtin(name).unwrap_or_else(|e| panic!("builtin {name}: {e}"))
}

fn range(b: &Board, kind: RegionKind) -> (Chip, u32, u32) {
    let r = b
        .region(kind)
        .unwrap_or_else(|| panic!("{}: no {kind}", b.name));
    (r.chip, r.start, r.end)
}

#[test]
fn every_builtin_loads_and_matches_its_name() {
    let expected = [
        ("boron", 13, McuFamily::Nrf52840),
        ("argon", 12, McuFamily::Nrf52840),
        ("bsom", 23, McuFamily::Nrf52840),
        ("b5som", 25, McuFamily::Nrf52840),
        ("tracker", 26, McuFamily::Nrf52840),
        ("p2", 32, McuFamily::Rtl872x),
        ("msom", 35, McuFamily::Rtl872x),
    ];
    assert_eq!(Board::builtin_names().len(), expected.len());
    for (name, pid, mcu) in expected {
        assert!(Board::builtin_names().contains(&name));
        let b = board(name);
        assert_eq!(b.name, name);
        assert_eq!(b.platform_id, pid, "{name}");
        assert_eq!(b.mcu, mcu, "{name}");
        assert_eq!(b.ota.chunk_size, 512);
        assert_eq!(b.source, format!("builtin:{name}"));
        for kind in RegionKind::REQUIRED {
            assert!(b.region(kind).is_some(), "{name} lacks {kind}");
        }
        // The module baseline is Device OS 6.2.0.
        assert_eq!(b.defaults.device_os.as_deref(), Some("6.2.0"));
        assert_eq!(b.default_module_version(2, 0), Some(3100), "{name}");
        assert_eq!(b.default_module_version(4, 1), Some(6200), "{name}");
        // Every sector of a chip is either unmodelled or covered; all regions inside chips.
        for r in &b.regions {
            let g = b.chip(r.chip).unwrap();
            assert!(g.contains_range(r.start, r.end), "{name} {}", r.kind);
        }
        // The board file on disk is the one compiled in.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../boards/");
        let from_disk = Board::load(format!("{path}{name}.toml")).unwrap();
        assert_eq!(from_disk.regions, b.regions);
    }
    assert!(matches!(
        Board::builtin("photon"),
        Err(BoardError::UnknownBuiltin { .. })
    ));
}

#[test]
fn nrf52840_4mib_layout() {
    for name in ["boron", "argon", "bsom"] {
        let b = board(name);
        assert_eq!(
            b.chips(),
            vec![
                (
                    Chip::Internal,
                    ChipGeometry {
                        base: 0,
                        size: 0x10_0000,
                        sector_size: 4096,
                        program_unit: 4
                    }
                ),
                (
                    Chip::External,
                    ChipGeometry {
                        base: 0,
                        size: 0x40_0000,
                        sector_size: 4096,
                        program_unit: 4
                    }
                ),
            ]
        );
        use Chip::*;
        use RegionKind::*;
        assert_eq!(range(&b, Mbr), (Internal, 0, 0x1000));
        assert_eq!(range(&b, RadioStack), (Internal, 0x1000, 0x27000));
        assert_eq!(range(&b, SystemPart), (Internal, 0x28000, 0xB4000));
        assert_eq!(range(&b, UserPart), (Internal, 0xB4000, 0xF4000));
        assert_eq!(range(&b, UserPartLegacy), (Internal, 0xD4000, 0xF4000));
        assert_eq!(range(&b, Bootloader), (Internal, 0xF4000, 0x10_0000));
        assert_eq!(range(&b, FileSystem), (External, 0, 0x20_0000));
        assert_eq!(range(&b, FactoryApp), (External, 0x20_0000, 0x24_0000));
        assert_eq!(range(&b, Reserved), (External, 0x24_0000, 0x24_C000));
        assert_eq!(range(&b, OtaStaging), (External, 0x24_C000, 0x3C_3000));
        assert_eq!(b.ota_staging().len(), 1500 * 1024);
        assert_eq!(range(&b, AssetFs), (External, 0x2E_0000, 0x40_0000));
        assert!(b.region(AssetFs).unwrap().may_overlap(OtaStaging));
        assert!(b.ota_staging().may_overlap(AssetFs));
        assert!(b.region(UserPart).unwrap().may_overlap(UserPartLegacy));
        assert_eq!(b.ota.max_binary_size, 1_536_000);

        assert_eq!(b.region_for_module(5, 2).unwrap().kind, UserPart);
        assert_eq!(b.region_for_module(5, 1).unwrap().kind, UserPartLegacy);
        assert_eq!(b.region_for_module(8, 0).unwrap().kind, RadioStack);
        assert_eq!(b.region_for_module(4, 1).unwrap().kind, SystemPart);
        assert_eq!(b.region_for_module(2, 0).unwrap().kind, Bootloader);
        assert!(b.region_for_module(2, 1).is_none());
        assert_eq!(b.default_module_version(8, 0), Some(202));
        assert_eq!(b.default_module_version(5, 2), Some(6));

        let bu = b.ota.bootloader_update.unwrap();
        assert_eq!((bu.staging.chip, bu.staging.address), (Internal, 0xD4000));
        assert_eq!((bu.backup.chip, bu.backup.address), (External, 0x24_0000));
        assert_eq!(bu.len, 0xC000);
        assert_eq!(b.regions_at(External, 0x30_0000).len(), 2);
    }
}

#[test]
fn nrf52840_8mib_layout() {
    for name in ["tracker", "b5som"] {
        let b = board(name);
        use Chip::*;
        use RegionKind::*;
        assert_eq!(b.chip(External).unwrap().size, 0x80_0000);
        assert_eq!(range(&b, UserPart), (Internal, 0xB4000, 0xF4000));
        assert_eq!(range(&b, FileSystem), (External, 0, 0x40_0000));
        assert_eq!(range(&b, AssetFs), (External, 0x40_0000, 0x60_0000));
        assert_eq!(range(&b, FactoryApp), (External, 0x60_0000, 0x64_0000));
        assert_eq!(range(&b, Reserved), (External, 0x64_0000, 0x68_9000));
        assert_eq!(range(&b, OtaStaging), (External, 0x68_9000, 0x80_0000));
        assert_eq!(b.ota_staging().len(), 1500 * 1024);
        assert!(b.ota_staging().may_overlap.is_empty());
        assert_eq!(b.ota.max_binary_size, 1_536_000);
    }
}

#[test]
fn rtl872x_layout() {
    for name in ["p2", "msom"] {
        let b = board(name);
        use Chip::*;
        use RegionKind::*;
        assert_eq!(
            b.chips(),
            vec![(
                Internal,
                ChipGeometry {
                    base: 0x0800_0000,
                    size: 0x80_0000,
                    sector_size: 4096,
                    program_unit: 4
                }
            )]
        );
        assert_eq!(range(&b, Km0Mbr), (Internal, 0x0800_0000, 0x0800_2000));
        assert_eq!(range(&b, Bootloader), (Internal, 0x0800_4000, 0x0801_4000));
        assert_eq!(range(&b, Km0Part1), (Internal, 0x0801_4000, 0x0805_E000));
        assert_eq!(range(&b, Reserved), (Internal, 0x0805_E000, 0x0805_F000));
        assert_eq!(range(&b, BootInfo), (Internal, 0x0805_F000, 0x0806_0000));
        assert_eq!(range(&b, SystemPart), (Internal, 0x0806_0000, 0x081E_0000));
        assert_eq!(range(&b, AssetFs), (Internal, 0x081E_0000, 0x0830_0000));
        assert_eq!(range(&b, OtaStaging), (Internal, 0x0830_0000, 0x0848_0000));
        assert_eq!(range(&b, UserPart), (Internal, 0x0848_0000, 0x0860_0000));
        assert_eq!(range(&b, FileSystem), (Internal, 0x0860_0000, 0x0880_0000));

        let user = b.region(UserPart).unwrap();
        assert_eq!(user.anchor, Anchor::End);
        assert_eq!(
            user.module,
            Some(ModuleSlotId {
                function: 5,
                index: 1
            })
        );
        assert_eq!(
            user.placement(0x1234),
            Some((0x0860_0000 - 0x1234, 0x0860_0000))
        );
        assert_eq!(user.placement(0x18_0001), None);
        assert_eq!(
            b.region(SystemPart).unwrap().placement(16),
            Some((0x0806_0000, 0x0806_0010))
        );

        assert_eq!(b.region_for_module(2, 1).unwrap().kind, Km0Mbr);
        assert_eq!(b.region_for_module(2, 2).unwrap().kind, Km0Part1);
        assert_eq!(b.region_for_module(5, 1).unwrap().kind, UserPart);
        assert!(b.region_for_module(5, 2).is_none());
        assert!(b.region_for_module(8, 0).is_none());
        assert_eq!(b.default_module_version(2, 1), Some(2));
        assert_eq!(b.default_module_version(2, 2), Some(9));
        assert_eq!(b.default_module_version(5, 1), Some(6));
        assert_eq!(b.ota.max_binary_size, 1_572_864);
        assert!(b.ota.bootloader_update.is_none());
    }
}

// ---- malformed files ---------------------------------------------------------------------------

/// Boron's text with `from` replaced by `to` (which must occur exactly once).
fn boron_with(from: &str, to: &str) -> String {
    let text = Board::builtin_toml("boron").unwrap();
    assert_eq!(text.matches(from).count(), 1, "pattern {from:?}");
    text.replace(from, to)
}

fn p2_with(from: &str, to: &str) -> String {
    let text = Board::builtin_toml("p2").unwrap();
    assert_eq!(text.matches(from).count(), 1, "pattern {from:?}");
    text.replace(from, to)
}

fn field_error(text: &str) -> (String, String) {
    match Board::from_toml_str(text, "bad.toml") {
        Err(BoardError::Field {
            file,
            field,
            problem,
        }) => {
            assert_eq!(file, "bad.toml");
            (field, problem)
        }
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn end_before_start() {
    let text = boron_with(
        "start = 0x000B4000\nend = 0x000F4000",
        "start = 0x000B4000\nend = 0x000B3000",
    );
    let (field, problem) = field_error(&text);
    assert_eq!(field, "regions.user_part.end");
    assert_eq!(problem, "end 0xB3000 is before start 0xB4000");
    let e = Board::from_toml_str(&text, "bad.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad.toml: regions.user_part.end: end 0xB3000 is before start 0xB4000"
    );
}

#[test]
fn overlap_names_both_regions() {
    // Without may_overlap, the OTA staging area and the asset FS collide.
    let text = boron_with("may_overlap = [\"asset_fs\"]\n", "");
    let (field, problem) = field_error(&text);
    assert_eq!(field, "regions.ota_staging");
    assert!(problem.contains("regions.asset_fs"), "{problem}");
    assert!(problem.contains("0x2E0000"), "{problem}");

    // System part grown into the user part.
    let text = boron_with("end = 0x000B4000", "end = 0x000B5000");
    let (field, problem) = field_error(&text);
    assert_eq!(field, "regions.system_part");
    assert!(problem.contains("regions.user_part"), "{problem}");
}

#[test]
fn region_outside_chip() {
    let text = boron_with("end = 0x400000\n", "end = 0x401000\n");
    let (field, problem) = field_error(&text);
    assert_eq!(field, "regions.asset_fs.end");
    assert!(problem.contains("outside the external flash"), "{problem}");

    let text = p2_with(
        "start = 0x08000000\nend = 0x08002000",
        "start = 0x07FFF000\nend = 0x08002000",
    );
    let (field, _) = field_error(&text);
    assert_eq!(field, "regions.km0_mbr.start");
}

#[test]
fn misaligned_regions() {
    let text = boron_with("start = 0x00028000", "start = 0x00028100");
    let (field, problem) = field_error(&text);
    assert_eq!(field, "regions.system_part.start");
    assert!(problem.contains("not aligned"), "{problem}");

    // The rtl872x user part is anchored at its end: an unaligned start is fine...
    let text = p2_with(
        "end = 0x08600000\nsize = 0x180000",
        "end = 0x08600000\nsize = 0x17F100",
    );
    let b = Board::from_toml_str(&text, "ok.toml").unwrap();
    assert_eq!(b.region(RegionKind::UserPart).unwrap().start, 0x0848_0F00);
    // ...but its end must be aligned.
    let text = p2_with(
        "end = 0x08600000\nsize = 0x180000",
        "end = 0x085FFF00\nsize = 0x17FF00",
    );
    let (field, _) = field_error(&text);
    assert_eq!(field, "regions.user_part.end");
}

#[test]
fn toml_type_error_has_file_and_line() {
    let text = boron_with("platform_id = 13", "platform_id = \"thirteen\"");
    let expected_line = text
        .lines()
        .position(|l| l.starts_with("platform_id"))
        .unwrap()
        + 1;
    match Board::from_toml_str(&text, "bad.toml") {
        Err(e @ BoardError::Toml { .. }) => {
            let BoardError::Toml {
                file,
                line,
                message,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(file, "bad.toml");
            assert_eq!(*line, Some(expected_line));
            assert!(
                message.contains(&format!("line {expected_line}")),
                "{message}"
            );
            assert!(e.to_string().starts_with("bad.toml: "));
        }
        other => panic!("expected a TOML error, got {other:?}"),
    }

    // Syntax error and a misspelt key are TOML errors too.
    let text = boron_with(
        "sector_size = 4096\nprogram_unit = 4\n\n# External",
        "sector_size = = 4096\nprogram_unit = 4\n\n# External",
    );
    assert!(matches!(
        Board::from_toml_str(&text, "x"),
        Err(BoardError::Toml { line: Some(_), .. })
    ));
    let text = boron_with("chunk_size = 512", "chunk_sise = 512");
    let e = Board::from_toml_str(&text, "x").unwrap_err();
    assert!(e.to_string().contains("chunk_sise"), "{e}");
    // Duplicate region table.
    let text = format!(
        "{}\n[regions.mbr]\nchip = \"internal\"\nstart = 0\nend = 0x1000\n",
        Board::builtin_toml("boron").unwrap()
    );
    assert!(matches!(
        Board::from_toml_str(&text, "x"),
        Err(BoardError::Toml { line: Some(_), .. })
    ));
}

#[test]
fn missing_required_region() {
    let text = boron_with(
        "[regions.file_system]         # LittleFS: /sys/dct.bin, /sys/fw_transfer, ...\nchip = \"external\"\nstart = 0x000000\nend = 0x200000\n",
        "",
    );
    let (field, problem) = field_error(&text);
    assert_eq!(field, "regions.file_system");
    assert!(problem.contains("missing"), "{problem}");
}

#[test]
fn other_validation_errors() {
    let cases: Vec<(String, &str)> = vec![
        (boron_with("mcu = \"nrf52840\"", "mcu = \"stm32f2\""), "mcu"),
        (
            boron_with("max_binary_size = 1_536_000", "max_binary_size = 1_536_001"),
            "ota.max_binary_size",
        ),
        (boron_with("chunk_size = 512", "chunk_size = 500"), "ota.chunk_size"),
        (
            boron_with("size = 0x00100000\nsector_size = 4096", "size = 0x00100000\nsector_size = 4000"),
            "flash.internal.sector_size",
        ),
        (
            boron_with("[regions.mbr]  ", "[regions.mbrr]  "),
            "regions.mbrr",
        ),
        (
            boron_with("may_overlap = [\"user_part\"]", "may_overlap = [\"user_prt\"]"),
            "regions.user_part_legacy.may_overlap",
        ),
        (
            boron_with("module = { function = 4, index = 1 }", "module = { function = 5, index = 2 }"),
            "regions.user_part.module",
        ),
        (
            boron_with("chip = \"internal\"\nstart = 0x00000000", "chip = \"intern\"\nstart = 0x00000000"),
            "regions.mbr.chip",
        ),
        (
            boron_with("staging = { chip = \"internal\", address = 0x000D4000 }", "staging = { chip = \"internal\", address = 0x000FA000 }"),
            "ota.bootloader_update.staging.address",
        ),
        (boron_with("radio_stack = 202", "mbr = 202"), "defaults.module_versions.mbr"),
        (
            p2_with("base = 0x08000000\nsize = 0x00800000\nsector_size = 4096\nprogram_unit = 4\n",
                "base = 0x08000000\nsize = 0x00800000\nsector_size = 4096\nprogram_unit = 4\n[flash.external]\nbase = 0\nsize = 0x1000\nsector_size = 4096\nprogram_unit = 4\n"),
            "flash.external",
        ),
    ];
    for (text, expected) in cases {
        let (field, problem) = field_error(&text);
        assert_eq!(field, expected, "{problem}");
    }
}

#[test]
fn board_deserializes_with_validation() {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        board: Board,
    }
    let inner = Board::builtin_toml("argon").unwrap();
    // Re-nest the argon file under [board] by prefixing every table header.
    let nested: String = inner
        .lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix('[') {
                format!("[board.{rest}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let (top, tables) = nested.split_at(nested.find("\n[board.").unwrap() + 1);
    let text = format!("[board]\n{top}{tables}");
    let w: Wrapper = toml::from_str(&text).unwrap();
    assert_eq!(w.board.platform_id, 12);
    assert_eq!(w.board.source, "<deserialized>");

    let bad = text.replace("max_binary_size = 1_536_000", "max_binary_size = 9_999_999");
    let e = toml::from_str::<Wrapper>(&bad).err().unwrap();
    assert!(e.to_string().contains("ota.max_binary_size"), "{e}");
}
