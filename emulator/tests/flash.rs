//! NOR rules, operation numbering, power cuts and copy-on-write snapshots of the simulated flash.

use emulator::flash::{
    Activity, ActivityCut, ChipId, CutMode, FlashArray, FlashError, FlashGeometry, OpKind,
    PowerCut, ERASED,
};

const INTERNAL: FlashGeometry = FlashGeometry {
    base: 0x0800_0000,
    size: 16 * 4096,
    sector_size: 4096,
    program_unit: 4,
};

const EXTERNAL: FlashGeometry = FlashGeometry {
    base: 0,
    size: 8 * 4096,
    sector_size: 4096,
    program_unit: 4,
};

fn two_chips(seed: u64) -> FlashArray {
    FlashArray::new(
        &[(ChipId::Internal, INTERNAL), (ChipId::External, EXTERNAL)],
        seed,
    )
    .expect("valid geometry")
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(salt) & 0xF7)
        .collect()
}

#[test]
fn new_flash_reads_erased() {
    let flash = two_chips(1);
    let all = flash
        .read_vec(ChipId::Internal, INTERNAL.base, INTERNAL.size as usize)
        .unwrap();
    assert!(all.iter().all(|&b| b == ERASED));
    assert_eq!(flash.memory().materialised_sectors, 0);
    assert!(flash.is_erased(ChipId::External, 0, EXTERNAL.size).unwrap());
}

#[test]
fn a_sector_holding_a_few_bytes_costs_a_partial_buffer() {
    let mut flash = two_chips(1);
    flash.program(ChipId::External, 4096, &[0x12; 16]).unwrap();
    assert_eq!(flash.memory().unique_bytes, 256);
    // Past the buffer: reads erased, programs as erased flash, is erased.
    assert!(flash
        .is_erased(ChipId::External, 4096 + 16, 4096 - 16)
        .unwrap());
    flash
        .program(ChipId::External, 4096 + 4092, &[0x34; 4])
        .unwrap();
    let sector = flash.read_vec(ChipId::External, 4096, 4096).unwrap();
    assert_eq!(sector[..16], [0x12; 16]);
    assert!(sector[16..4092].iter().all(|&b| b == ERASED));
    assert_eq!(sector[4092..], [0x34; 4]);
    assert_eq!(flash.memory().unique_bytes, 4096);
    assert!(matches!(
        flash.program(ChipId::External, 4096, &[0xFF; 4]),
        Err(FlashError::ProgramWouldSetBits { .. })
    ));
}

#[test]
fn erasing_an_erased_area_numbers_every_erase_and_leaves_it_erased() {
    let template = two_chips(1);
    let mut device = template.clone();
    device
        .erase_range(ChipId::Internal, INTERNAL.base, INTERNAL.size)
        .unwrap();
    assert_eq!(device.op_count(), 16, "every erase is numbered");
    assert_eq!(device.memory().materialised_sectors, 0);
    assert!(device
        .is_erased(ChipId::Internal, INTERNAL.base, INTERNAL.size)
        .unwrap());
}

#[test]
fn program_clears_bits_and_erase_restores_ff() {
    let mut flash = two_chips(1);
    let addr = INTERNAL.base + 4096 - 8; // spans two sectors
    flash.program(ChipId::Internal, addr, &[0xF0; 16]).unwrap();
    // Programming further 0s over programmed cells is allowed (only clears bits).
    flash.program(ChipId::Internal, addr, &[0x30; 16]).unwrap();
    assert_eq!(
        flash.read_vec(ChipId::Internal, addr, 16).unwrap(),
        vec![0x30; 16]
    );

    flash.erase_sector(ChipId::Internal, INTERNAL.base).unwrap();
    let data = flash.read_vec(ChipId::Internal, addr, 16).unwrap();
    assert_eq!(&data[..8], &[ERASED; 8]);
    assert_eq!(&data[8..], &[0x30; 8], "the next sector is not erased");
}

#[test]
fn program_that_would_set_a_bit_is_rejected_and_writes_nothing() {
    let mut flash = two_chips(1);
    let addr = INTERNAL.base + 64;
    flash.program(ChipId::Internal, addr, &[0x0F; 8]).unwrap();
    let ops = flash.op_count();
    let mut data = [0x0F; 8];
    data[5] = 0x1F; // bit 4 is 0 in flash
    data[0] = 0x00; // would be fine on its own
    assert_eq!(
        flash.program(ChipId::Internal, addr, &data),
        Err(FlashError::ProgramWouldSetBits {
            chip: ChipId::Internal,
            addr: addr + 5
        })
    );
    assert_eq!(
        flash.read_vec(ChipId::Internal, addr, 8).unwrap(),
        vec![0x0F; 8]
    );
    assert_eq!(
        flash.op_count(),
        ops,
        "a rejected program is not an operation"
    );
}

#[test]
fn unaligned_program_and_erase_are_rejected() {
    let mut flash = two_chips(1);
    let unaligned = |r: Result<(), FlashError>| matches!(r, Err(FlashError::Unaligned { .. }));
    assert!(unaligned(flash.program(ChipId::External, 2, &[0; 4])));
    assert!(unaligned(flash.program(ChipId::External, 4, &[0; 3])));
    assert!(unaligned(flash.erase_sector(ChipId::External, 512)));
    assert!(unaligned(flash.erase_range(ChipId::External, 0, 4097)));
    assert_eq!(flash.op_count(), 0);
    assert!(flash.is_erased(ChipId::External, 0, EXTERNAL.size).unwrap());
}

#[test]
fn out_of_range_access_names_chip_and_address() {
    let mut flash = two_chips(1);
    let err = flash.program(ChipId::External, EXTERNAL.size, &[0; 4]);
    assert_eq!(
        err,
        Err(FlashError::OutOfRange {
            chip: ChipId::External,
            addr: EXTERNAL.size,
            len: 4,
            start: 0,
            end: u64::from(EXTERNAL.size),
        })
    );
    assert_eq!(
        err.unwrap_err().to_string(),
        "4-byte access at 0x00008000 falls outside external flash (0x00000000..0x00008000)"
    );
    // Below the base, overflowing address arithmetic, huge reads: errors, no panics.
    assert!(flash.read_vec(ChipId::Internal, 0, 4).is_err());
    assert!(flash.read_vec(ChipId::Internal, u32::MAX, 4).is_err());
    assert!(flash
        .read_vec(ChipId::Internal, INTERNAL.base, usize::MAX)
        .is_err());
    assert!(flash
        .erase_range(ChipId::Internal, u32::MAX, u32::MAX)
        .is_err());
    assert!(flash.erase_sector(ChipId::External, u32::MAX).is_err());
    let single = FlashArray::new(&[(ChipId::Internal, INTERNAL)], 1).unwrap();
    assert_eq!(
        single.read_vec(ChipId::External, 0, 1),
        Err(FlashError::NoSuchChip {
            chip: ChipId::External
        })
    );
}

#[test]
fn invalid_geometry_is_an_error_not_a_panic() {
    let bad = [
        FlashGeometry {
            size: 0,
            ..EXTERNAL
        },
        FlashGeometry {
            sector_size: 0,
            ..EXTERNAL
        },
        FlashGeometry {
            program_unit: 0,
            ..EXTERNAL
        },
        FlashGeometry {
            size: 4097,
            ..EXTERNAL
        },
        FlashGeometry {
            program_unit: 3,
            ..EXTERNAL
        },
        FlashGeometry {
            base: 0xFFFF_F000,
            ..EXTERNAL
        },
    ];
    for g in bad {
        assert!(
            matches!(
                FlashArray::new(&[(ChipId::External, g)], 0),
                Err(FlashError::BadGeometry { .. })
            ),
            "{g:?}"
        );
    }
    assert_eq!(
        FlashArray::new(
            &[(ChipId::External, EXTERNAL), (ChipId::External, EXTERNAL)],
            0
        )
        .unwrap_err(),
        FlashError::DuplicateChip {
            chip: ChipId::External
        }
    );
    // A chip ending exactly at 4 GiB is fine.
    let top = FlashGeometry {
        base: 0xFFFF_0000,
        size: 0x1_0000,
        ..EXTERNAL
    };
    let mut flash = FlashArray::new(&[(ChipId::External, top)], 0).unwrap();
    flash
        .program(ChipId::External, 0xFFFF_FFFC, &[0; 4])
        .unwrap();
}

#[test]
fn operations_are_numbered_across_both_chips() {
    let mut flash = two_chips(1);
    flash.enable_log();
    assert_eq!(flash.op_count(), 0);
    flash
        .program(ChipId::Internal, INTERNAL.base, &[0; 4])
        .unwrap();
    flash.erase_range(ChipId::External, 0, 3 * 4096).unwrap();
    flash.program(ChipId::External, 8, &[0; 8]).unwrap();
    flash.read_vec(ChipId::External, 0, 16).unwrap();
    assert_eq!(flash.op_count(), 5, "reads are not operations");

    let log: Vec<_> = flash
        .op_log()
        .iter()
        .map(|op| (op.seq, op.chip, op.kind, op.addr, op.len))
        .collect();
    assert_eq!(
        log,
        vec![
            (0, ChipId::Internal, OpKind::Program, INTERNAL.base, 4),
            (1, ChipId::External, OpKind::Erase, 0, 4096),
            (2, ChipId::External, OpKind::Erase, 4096, 4096),
            (3, ChipId::External, OpKind::Erase, 8192, 4096),
            (4, ChipId::External, OpKind::Program, 8, 8),
        ]
    );
}

/// A flash whose sector at `INTERNAL.base` holds `pattern(4096, 1)`, and the op number next.
fn prepared(seed: u64) -> FlashArray {
    let mut flash = two_chips(seed);
    flash
        .program(ChipId::Internal, INTERNAL.base, &pattern(4096, 1))
        .unwrap();
    flash
}

#[test]
fn cut_before_leaves_flash_untouched_and_blocks_all_access_until_power_on() {
    let mut flash = prepared(7);
    let before = flash.clone();
    let n = flash.op_count();
    flash.schedule_cut(PowerCut {
        at_op: n,
        mode: CutMode::Before,
    });
    assert_eq!(
        flash.erase_sector(ChipId::Internal, INTERNAL.base),
        Err(FlashError::PowerLost { op: n })
    );
    assert!(flash.power_lost());
    assert_eq!(
        flash.read_vec(ChipId::Internal, INTERNAL.base, 4),
        Err(FlashError::PowerLost { op: n })
    );
    assert_eq!(
        flash.program(ChipId::External, 0, &[0; 4]),
        Err(FlashError::PowerLost { op: n })
    );
    assert_eq!(flash.op_count(), n + 1);

    flash.power_on();
    assert!(!flash.power_lost());
    assert_eq!(
        flash.read_vec(ChipId::Internal, INTERNAL.base, 4096),
        before.read_vec(ChipId::Internal, INTERNAL.base, 4096)
    );
    assert!(flash.is_erased(ChipId::External, 0, 4).unwrap());
}

#[test]
fn cut_after_applies_the_operation_then_loses_power() {
    let mut flash = prepared(7);
    let n = flash.op_count();
    flash.schedule_cut(PowerCut {
        at_op: n,
        mode: CutMode::After,
    });
    assert_eq!(
        flash.erase_sector(ChipId::Internal, INTERNAL.base),
        Err(FlashError::PowerLost { op: n })
    );
    flash.power_on();
    assert!(flash
        .is_erased(ChipId::Internal, INTERNAL.base, 4096)
        .unwrap());
}

/// For every byte, `torn` may differ from `before` only in bits the operation changes, and
/// only towards the value `after`.
fn assert_torn_between(before: &[u8], torn: &[u8], after: &[u8]) {
    for (i, ((&b, &t), &a)) in before.iter().zip(torn).zip(after).enumerate() {
        let changing = b ^ a;
        // A bit has two values, so a changing bit that moved now holds its value in `after`.
        assert_eq!(
            (b ^ t) & !changing,
            0,
            "byte {i}: a bit the op does not change moved"
        );
    }
}

#[test]
fn torn_program_clears_only_some_of_the_bits_it_would_clear() {
    for seed in 0..32 {
        let mut flash = prepared(seed);
        let addr = INTERNAL.base + 4096;
        let data = pattern(256, 9);
        let n = flash.op_count();
        flash.schedule_cut(PowerCut {
            at_op: n,
            mode: CutMode::Torn,
        });
        assert_eq!(
            flash.program(ChipId::Internal, addr, &data),
            Err(FlashError::PowerLost { op: n })
        );
        flash.power_on();
        let torn = flash.read_vec(ChipId::Internal, addr, 256).unwrap();
        assert_torn_between(&[ERASED; 256], &torn, &data);
        assert_ne!(torn, vec![ERASED; 256], "seed {seed}: torn equals before");
        assert_ne!(torn, data, "seed {seed}: torn equals after");
    }
}

#[test]
fn torn_erase_sets_only_some_zero_bits_of_the_sector() {
    for seed in 0..32 {
        let mut flash = prepared(seed);
        let before = flash
            .read_vec(ChipId::Internal, INTERNAL.base, 4096)
            .unwrap();
        let n = flash.op_count();
        flash.schedule_cut(PowerCut {
            at_op: n,
            mode: CutMode::Torn,
        });
        assert!(flash.erase_sector(ChipId::Internal, INTERNAL.base).is_err());
        flash.power_on();
        let torn = flash
            .read_vec(ChipId::Internal, INTERNAL.base, 4096)
            .unwrap();
        assert_torn_between(&before, &torn, &[ERASED; 4096]);
        assert_ne!(torn, before, "seed {seed}: torn equals before");
        assert_ne!(torn, vec![ERASED; 4096], "seed {seed}: torn equals after");
    }
}

#[test]
fn same_seed_and_operation_tear_the_same_way() {
    let torn_bytes = |seed: u64, at_op_offset: u64| {
        let mut flash = prepared(seed);
        let n = flash.op_count() + at_op_offset;
        flash.schedule_cut(PowerCut {
            at_op: n,
            mode: CutMode::Torn,
        });
        for i in 0..=at_op_offset {
            let addr = INTERNAL.base + 4096 + i as u32 * 64;
            let _ = flash.program(ChipId::Internal, addr, &pattern(64, 3));
        }
        flash.power_on();
        flash
            .read_vec(
                ChipId::Internal,
                INTERNAL.base + 4096,
                64 * (at_op_offset as usize + 1),
            )
            .unwrap()
    };
    assert_eq!(torn_bytes(42, 0), torn_bytes(42, 0));
    assert_eq!(torn_bytes(42, 3), torn_bytes(42, 3));
    let differ = (0..8)
        .filter(|&s| torn_bytes(s, 0) != torn_bytes(s + 100, 0))
        .count();
    assert!(differ >= 6, "different seeds should tear differently");
}

#[test]
fn several_cuts_fire_in_turn_and_op_numbers_keep_counting() {
    let mut flash = two_chips(3);
    flash.schedule_cut(PowerCut {
        at_op: 1,
        mode: CutMode::After,
    });
    flash.schedule_cut(PowerCut {
        at_op: 3,
        mode: CutMode::Before,
    });
    flash.program(ChipId::External, 0, &[0; 4]).unwrap();
    assert_eq!(
        flash.program(ChipId::External, 4, &[0; 4]),
        Err(FlashError::PowerLost { op: 1 })
    );
    flash.power_on();
    assert_eq!(flash.pending_cuts().len(), 1);
    flash.program(ChipId::External, 8, &[0; 4]).unwrap();
    assert_eq!(
        flash.program(ChipId::External, 12, &[0; 4]),
        Err(FlashError::PowerLost { op: 3 })
    );
    flash.power_on();
    assert_eq!(
        flash.read_vec(ChipId::External, 0, 16).unwrap(),
        [[0u8; 12].as_slice(), &[ERASED; 4]].concat()
    );
    assert!(flash.pending_cuts().is_empty());
}

#[test]
fn an_activity_cut_counts_only_the_operations_of_that_activity_and_labels_the_log() {
    let mut flash = two_chips(4);
    flash.enable_log();
    flash.schedule_activity_cut(ActivityCut {
        activity: Activity::Download,
        skip: 1,
        mode: CutMode::Before,
    });
    // Operations of other activities do not count.
    flash.program(ChipId::External, 0, &[0; 4]).unwrap();
    flash.set_activity(Activity::Download);
    flash.program(ChipId::External, 4, &[0; 4]).unwrap();
    flash.set_activity(Activity::Commit);
    flash.program(ChipId::External, 8, &[0; 4]).unwrap();
    flash.set_activity(Activity::Download);
    assert_eq!(
        flash.program(ChipId::External, 12, &[0; 4]),
        Err(FlashError::PowerLost { op: 3 })
    );
    assert!(flash.pending_activity_cuts().is_empty());
    // Power on: the firmware starts afresh, so does the label.
    flash.power_on();
    assert_eq!(flash.activity(), Activity::Other);
    let log: Vec<_> = flash
        .take_log()
        .iter()
        .map(|o| (o.seq, o.activity, o.cut))
        .collect();
    assert_eq!(
        log,
        [
            (0, Activity::Other, None),
            (1, Activity::Download, None),
            (2, Activity::Commit, None),
            (3, Activity::Download, Some(CutMode::Before)),
        ]
    );
    assert_eq!(
        flash.read_vec(ChipId::External, 12, 4).unwrap(),
        [ERASED; 4]
    );
}

#[test]
fn a_cut_during_erase_range_stops_at_that_sector() {
    let mut flash = two_chips(3);
    for s in 0..4 {
        flash.program(ChipId::External, s * 4096, &[0; 4]).unwrap();
    }
    let n = flash.op_count();
    flash.schedule_cut(PowerCut {
        at_op: n + 1,
        mode: CutMode::Before,
    });
    assert_eq!(
        flash.erase_range(ChipId::External, 0, 4 * 4096),
        Err(FlashError::PowerLost { op: n + 1 })
    );
    flash.power_on();
    let first_words: Vec<bool> = (0..4)
        .map(|s| flash.is_erased(ChipId::External, s * 4096, 4).unwrap())
        .collect();
    assert_eq!(first_words, vec![true, false, false, false]);
}

#[test]
fn snapshots_share_memory_until_written() {
    let mut flash = two_chips(5);
    for s in 0..8 {
        flash
            .program(ChipId::External, s * 4096, &pattern(4096, s as u8))
            .unwrap();
    }
    let original = flash.read_vec(ChipId::External, 0, 8 * 4096).unwrap();
    let mut snapshots: Vec<FlashArray> = (0..1000).map(|_| flash.clone()).collect();
    let m = flash.memory();
    assert_eq!(m.materialised_sectors, 8);
    assert_eq!(m.unique_bytes, 0);
    assert_eq!(m.shared_bytes, 8 * 4096);

    snapshots[500].erase_sector(ChipId::External, 4096).unwrap();
    snapshots[501]
        .program(ChipId::External, 0, &[0; 4])
        .unwrap();
    let m = snapshots[501].memory();
    assert_eq!(
        m.unique_bytes, 4096,
        "a write copies only the touched sector"
    );
    assert_eq!(snapshots[500].memory().materialised_sectors, 7);

    for (i, s) in snapshots.iter().enumerate() {
        if i != 500 && i != 501 {
            assert_eq!(s.read_vec(ChipId::External, 0, 8 * 4096).unwrap(), original);
        }
    }
    assert_eq!(
        flash.read_vec(ChipId::External, 0, 8 * 4096).unwrap(),
        original
    );
}

#[test]
fn errors_read_as_one_sentence() {
    assert_eq!(
        FlashError::PowerLost { op: 17 }.to_string(),
        "power was lost at flash operation 17; the device must be powered on again"
    );
    assert_eq!(
        FlashError::ProgramWouldSetBits {
            chip: ChipId::Internal,
            addr: 0x0800_0040
        }
        .to_string(),
        "program at 0x08000040 on internal flash would turn 0 bits into 1; \
         the sector must be erased first"
    );
}

/// Erases, programs over programmed bytes and plain programs on both chips: every kind of
/// operation a cut can hit.
fn script(flash: &mut FlashArray) -> Result<(), FlashError> {
    flash.erase_sector(ChipId::Internal, INTERNAL.base)?;
    flash.program(ChipId::Internal, INTERNAL.base, &pattern(1024, 3))?;
    flash.program(ChipId::External, 4096, &pattern(2048, 5))?;
    flash.erase_range(ChipId::External, 0, 2 * 4096)?;
    flash.program(ChipId::Internal, INTERNAL.base + 1024, &pattern(4096, 7))?;
    Ok(())
}

fn dump(flash: &FlashArray) -> Vec<u8> {
    let mut out = flash
        .read_vec(ChipId::Internal, INTERNAL.base, INTERNAL.size as usize)
        .unwrap();
    out.extend(
        flash
            .read_vec(ChipId::External, 0, EXTERNAL.size as usize)
            .unwrap(),
    );
    out
}

#[test]
fn a_cut_forked_from_a_snapshot_leaves_the_flash_a_cut_run_leaves() {
    let mut clean = prepared(9);
    clean.record_snapshots();
    script(&mut clean).unwrap();
    let snapshots = clean.take_snapshots();
    assert_eq!(snapshots.len() as u64, clean.op_count() - 1);
    for snapshot in &snapshots {
        for mode in CutMode::ALL {
            let mut run = prepared(9);
            run.schedule_cut(PowerCut {
                at_op: snapshot.seq(),
                mode,
            });
            assert!(script(&mut run).unwrap_err().is_power_loss());
            let mut forked = snapshot.cut(mode).expect("the cut fires");
            assert_eq!(forked.lost_at(), run.lost_at());
            assert_eq!(forked.op_count(), run.op_count());
            run.power_on();
            forked.power_on();
            assert_eq!(dump(&forked), dump(&run), "op {} {mode:?}", snapshot.seq());
        }
    }
}

#[test]
fn equal_content_keys_mean_unchanged_contents() {
    let mut flash = prepared(1);
    let key = |f: &FlashArray| {
        f.content_key(ChipId::Internal, INTERNAL.base, 8192)
            .unwrap()
    };
    let before = key(&flash);
    let snapshot = flash.clone();
    assert_eq!(key(&snapshot), before, "a snapshot has the same contents");
    // A write elsewhere changes nothing; a write inside, even of a single byte, does.
    flash
        .program(ChipId::Internal, INTERNAL.base + 8192, &[0, 0, 0, 0])
        .unwrap();
    assert_eq!(key(&flash), before);
    flash
        .program(ChipId::Internal, INTERNAL.base + 4096, &[0, 0, 0, 0])
        .unwrap();
    assert_ne!(key(&flash), before);
    assert_eq!(key(&snapshot), before, "the snapshot did not change");
    flash.erase_sector(ChipId::Internal, INTERNAL.base).unwrap();
    assert_ne!(key(&flash), before);
}

#[test]
fn holds_compares_bytes_when_the_versions_differ() {
    let mut flash = prepared(1);
    let key = flash
        .content_key(ChipId::Internal, INTERNAL.base, 8192)
        .unwrap();
    // Erase and write the same bytes again: new versions, same contents.
    flash.erase_sector(ChipId::Internal, INTERNAL.base).unwrap();
    flash
        .program(ChipId::Internal, INTERNAL.base, &pattern(4096, 1))
        .unwrap();
    assert_ne!(
        flash
            .content_key(ChipId::Internal, INTERNAL.base, 8192)
            .unwrap(),
        key
    );
    assert!(flash.holds(&key).unwrap());
    flash
        .program(
            ChipId::Internal,
            INTERNAL.base + 4096,
            &[0xFE, 0xFF, 0xFF, 0xFF],
        )
        .unwrap();
    assert!(!flash.holds(&key).unwrap());
}

#[test]
fn an_io_fault_refuses_one_operation_of_its_activity_and_changes_nothing() {
    use emulator::flash::IoFault;
    let mut flash = two_chips(1);
    let b = INTERNAL.base;
    flash.schedule_io_fault(IoFault {
        activity: Activity::Commit,
        kind: Some(OpKind::Program),
        skip: 1,
    });
    // Other activities and other kinds do not count.
    flash.program(ChipId::Internal, b, &[0; 4]).unwrap();
    flash.set_activity(Activity::Commit);
    flash.erase_sector(ChipId::Internal, b + 0x1000).unwrap();
    flash
        .program(ChipId::Internal, b + 0x1000, &[0x11; 4])
        .unwrap();
    let before = flash.op_count();
    let e = flash
        .program(ChipId::Internal, b + 0x1004, &[0x22; 4])
        .unwrap_err();
    assert!(
        matches!(
            e,
            FlashError::Io {
                kind: OpKind::Program,
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.is_power_loss());
    assert!(!flash.power_lost());
    assert_eq!(
        flash.op_count(),
        before,
        "a refused operation takes no number"
    );
    assert_eq!(
        flash.read_vec(ChipId::Internal, b + 0x1004, 4).unwrap(),
        [0xFF; 4]
    );
    // Once: the next program works.
    flash
        .program(ChipId::Internal, b + 0x1004, &[0x22; 4])
        .unwrap();
    assert!(flash.pending_io_faults().is_empty());
}

#[test]
fn an_io_fault_aimed_at_a_part_fires_only_inside_it_and_the_log_keeps_the_outer_activity() {
    use emulator::flash::IoFault;
    let mut flash = two_chips(1);
    flash.enable_log();
    let b = INTERNAL.base;
    flash.schedule_io_fault(IoFault {
        activity: Activity::AssetStore,
        kind: Some(OpKind::Program),
        skip: 0,
    });
    flash.set_activity(Activity::Commit);
    // The commit outside the part does not count.
    flash.program(ChipId::Internal, b, &[0; 4]).unwrap();
    flash.set_part(Some(Activity::AssetStore));
    let e = flash
        .program(ChipId::Internal, b + 4, &[0x22; 4])
        .unwrap_err();
    assert!(matches!(e, FlashError::Io { .. }), "{e}");
    flash.program(ChipId::Internal, b + 4, &[0x22; 4]).unwrap();
    flash.set_part(None);
    assert!(flash.pending_io_faults().is_empty());
    assert!(
        flash
            .op_log()
            .iter()
            .all(|op| op.activity == Activity::Commit),
        "operations of a part are logged under the outer activity"
    );
}

#[test]
fn devices_that_complete_the_same_sector_share_one_buffer_until_one_writes_it() {
    let mut template = two_chips(7);
    template.share_identical_sectors();
    let mut a = template.clone();
    let mut b = template.clone();
    let image = pattern(2 * 4096, 9);
    // Written in halves, as an OTA writes chunks: the sector is shared once its last byte is.
    for f in [&mut a, &mut b] {
        f.program(ChipId::External, 8192, &image[..6144]).unwrap();
        f.program(ChipId::External, 8192 + 6144, &image[6144..])
            .unwrap();
    }
    assert_eq!(a.op_count(), 2, "sharing numbers no operations");
    let m = a.memory();
    assert_eq!(m.materialised_sectors, 2);
    assert_eq!(m.unique_bytes, 0, "both sectors are shared with b");
    assert_eq!(m.shared_bytes, 2 * 4096);

    // One device writing a shared sector copies it; the other keeps the image.
    a.program(ChipId::External, 8192, &[0; 4]).unwrap();
    assert_eq!(b.read_vec(ChipId::External, 8192, 8192).unwrap(), image);
    let mut expected = image.clone();
    expected[..4].fill(0);
    assert_eq!(a.read_vec(ChipId::External, 8192, 8192).unwrap(), expected);
    assert_eq!(a.memory().unique_bytes, 4096);

    // A power cut behaves as without sharing: the cut operation is numbered, power is lost.
    let mut c = template.clone();
    c.schedule_cut(PowerCut {
        at_op: 0,
        mode: CutMode::After,
    });
    assert_eq!(
        c.program(ChipId::External, 8192, &image[..4096]),
        Err(FlashError::PowerLost { op: 0 })
    );
    c.power_on();
    assert_eq!(
        c.read_vec(ChipId::External, 8192, 4096).unwrap(),
        image[..4096]
    );
    assert_eq!(c.memory().unique_bytes, 0, "the completed sector is shared");
}
