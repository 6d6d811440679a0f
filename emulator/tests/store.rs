//! The key-value store keeps every value whole across power cuts at any flash operation.

use std::collections::BTreeMap;

use emulator::flash::{
    ChipId, CutMode, FlashArray, FlashError, FlashGeometry, OpKind, PowerCut, ERASED,
};
use emulator::store::{Store, StoreError, MAX_KEY_LEN};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const CHIP: ChipId = ChipId::External;
/// Small sectors keep the exhaustive sweeps fast and make compaction frequent.
const GEOMETRY: FlashGeometry = FlashGeometry {
    base: 0,
    size: 4 * 256,
    sector_size: 256,
    program_unit: 4,
};
/// Store in sectors 1 and 2; sectors 0 and 3 hold guard data the store must never touch.
const START: u32 = 256;
const LEN: u32 = 512;

type Model = BTreeMap<String, Vec<u8>>;

#[derive(Debug, Clone)]
enum Step {
    Put(&'static str, Vec<u8>),
    Remove(&'static str),
}

impl Step {
    fn key(&self) -> &'static str {
        match self {
            Step::Put(k, _) | Step::Remove(k) => k,
        }
    }

    fn new_value(&self) -> Option<Vec<u8>> {
        match self {
            Step::Put(_, v) => Some(v.clone()),
            Step::Remove(_) => None,
        }
    }

    fn apply(&self, flash: &mut FlashArray, store: &mut Store) -> Result<(), StoreError> {
        match self {
            Step::Put(k, v) => store.put(flash, k, v),
            Step::Remove(k) => store.remove(flash, k).map(|_| ()),
        }
    }

    fn apply_to_model(&self, model: &mut Model) {
        match self {
            Step::Put(k, v) => {
                model.insert(k.to_string(), v.clone());
            }
            Step::Remove(k) => {
                model.remove(*k);
            }
        }
    }
}

fn value(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ salt.wrapping_mul(17))
        .collect()
}

fn guard() -> Vec<u8> {
    value(256, 0x5C)
}

/// A device flash with guard data around the store area and a formatted, empty store.
fn device(seed: u64) -> (FlashArray, Store) {
    let mut flash = FlashArray::new(&[(CHIP, GEOMETRY)], seed).unwrap();
    flash.program(CHIP, 0, &guard()).unwrap();
    flash.program(CHIP, 768, &guard()).unwrap();
    let store = Store::format(&mut flash, CHIP, START, LEN).unwrap();
    (flash, store)
}

fn assert_guards_intact(flash: &FlashArray, ctx: &str) {
    assert_eq!(flash.read_vec(CHIP, 0, 256).unwrap(), guard(), "{ctx}");
    assert_eq!(flash.read_vec(CHIP, 768, 256).unwrap(), guard(), "{ctx}");
}

fn contents(flash: &FlashArray, store: &Store) -> Model {
    store
        .keys()
        .map(|k| (k.to_string(), store.get(flash, k).unwrap().unwrap()))
        .collect()
}

/// Run `steps`, updating `model` after each one that completes. At a power loss, returns the
/// index of the step that was in flight.
fn run(
    flash: &mut FlashArray,
    store: &mut Store,
    model: &mut Model,
    steps: &[Step],
) -> Result<(), usize> {
    for (i, step) in steps.iter().enumerate() {
        match step.apply(flash, store) {
            Ok(()) => step.apply_to_model(model),
            Err(StoreError::Flash(FlashError::PowerLost { .. })) => return Err(i),
            Err(e) => panic!("step {i} ({step:?}) failed: {e}"),
        }
    }
    Ok(())
}

/// Power on after a cut during `in_flight`, mount, and check that every key other than the
/// in-flight one is intact and the in-flight one holds its complete old or new value. Updates
/// `model` to what the store holds and returns the mounted store.
fn recover(flash: &mut FlashArray, model: &mut Model, in_flight: &Step, ctx: &str) -> Store {
    flash.power_on();
    let ops = flash.op_count();
    let store = Store::mount(flash, CHIP, START, LEN)
        .unwrap_or_else(|e| panic!("{ctx}: mount failed: {e}"));
    assert_eq!(flash.op_count(), ops, "{ctx}: mount wrote to flash");
    let key = in_flight.key();
    for (k, v) in model.iter().filter(|(k, _)| k.as_str() != key) {
        assert_eq!(
            store.get(flash, k).unwrap().as_ref(),
            Some(v),
            "{ctx}: untouched key {k} changed"
        );
    }
    let actual = store
        .get(flash, key)
        .unwrap_or_else(|e| panic!("{ctx}: get({key}) failed: {e}"));
    assert!(
        actual.as_ref() == model.get(key) || actual == in_flight.new_value(),
        "{ctx}: {key} is neither its old nor its new value: {actual:?}"
    );
    match actual {
        Some(v) => model.insert(key.to_string(), v),
        None => model.remove(key),
    };
    assert_eq!(contents(flash, &store), *model, "{ctx}: unexpected keys");
    assert_guards_intact(flash, ctx);
    store
}

/// Enough updates of a few keys, with varying sizes and removals, to compact several times.
fn workload() -> Vec<Step> {
    vec![
        Step::Put("dct/slot1", value(20, 1)),
        Step::Put("dct/slot2", value(20, 2)),
        Step::Put("sys/fw_transfer", value(76, 3)),
        Step::Put("dct/slot1", value(20, 4)),
        Step::Put("dct/slot2", value(3, 5)),
        Step::Remove("dct/slot1"),
        Step::Put("sys/fw_transfer", value(76, 6)),
        Step::Put("dct/slot1", value(20, 7)),
        Step::Put("empty", Vec::new()),
        Step::Put("sys/fw_transfer", value(76, 8)),
        Step::Remove("dct/slot2"),
        Step::Put("dct/slot3", value(40, 9)),
        Step::Put("sys/fw_transfer", value(76, 10)),
    ]
}

fn final_model(steps: &[Step]) -> Model {
    let mut model = Model::new();
    steps.iter().for_each(|s| s.apply_to_model(&mut model));
    model
}

/// Cut at every operation of `steps` in every mode (for a few tear seeds), check the
/// old-or-new invariant, then finish the workload and check the end state. If `second_cuts`
/// is set, also cut again during that recovery, up to that many operations after power on.
/// Returns the number of runs and the number of compactions in the clean run.
fn sweep(steps: &[Step], seeds: std::ops::Range<u64>, second_cuts: u64) -> (usize, u32) {
    let (mut clean, mut store) = device(0);
    let first = clean.op_count();
    run(&mut clean, &mut store, &mut Model::new(), steps).unwrap();
    let last = clean.op_count();
    let expected = final_model(steps);
    let mut runs = 0;
    let compactions = store.generation() - 1;

    for seed in seeds {
        for at_op in first..last {
            for mode in CutMode::ALL {
                for second in 0..=second_cuts {
                    runs += 1;
                    let ctx = format!("seed {seed}, cut {mode:?} at op {at_op}, second {second}");
                    let (mut flash, mut store) = device(seed);
                    flash.schedule_cut(PowerCut { at_op, mode });
                    let mut model = Model::new();
                    let i = run(&mut flash, &mut store, &mut model, steps)
                        .expect_err("the cut should fire");
                    let mut store = recover(&mut flash, &mut model, &steps[i], &ctx);
                    let mut rest = &steps[i..];

                    if second > 0 {
                        let mode = [CutMode::Torn, CutMode::Before][(second % 2) as usize];
                        let at_op = flash.op_count() + second - 1;
                        flash.schedule_cut(PowerCut { at_op, mode });
                        if let Err(j) = run(&mut flash, &mut store, &mut model, rest) {
                            let ctx = format!("{ctx}: second cut {mode:?} at op {at_op}");
                            store = recover(&mut flash, &mut model, &rest[j], &ctx);
                            rest = &rest[j..];
                        }
                        flash.clear_cuts();
                    }

                    run(&mut flash, &mut store, &mut model, rest).unwrap();
                    assert_eq!(model, expected, "{ctx}");
                    let remounted = Store::mount(&flash, CHIP, START, LEN).unwrap();
                    assert_eq!(
                        contents(&flash, &remounted),
                        expected,
                        "{ctx}: after remount"
                    );
                }
            }
        }
    }
    (runs, compactions)
}

#[test]
fn put_is_atomic_under_a_cut_at_every_operation_in_every_mode() {
    let steps = [
        Step::Put("a", value(8, 1)),
        Step::Put("b", value(30, 2)),
        Step::Put("a", value(12, 3)),
    ];
    sweep(&steps, 0..16, 0);
}

#[test]
fn compaction_survives_a_cut_at_every_operation() {
    let (runs, compactions) = sweep(&workload(), 0..4, 0);
    assert!(
        compactions >= 3,
        "the workload compacts only {compactions} times"
    );
    assert!(runs > 100, "only {runs} runs");
}

#[test]
fn recovery_survives_a_second_cut() {
    sweep(&workload(), 0..2, 6);
}

#[test]
fn a_torn_record_is_skipped_and_the_next_write_compacts_around_it() {
    let mut checked = 0;
    for seed in 0..16 {
        let (mut flash, mut store) = device(seed);
        store.put(&mut flash, "kept", &value(16, 1)).unwrap();
        let generation = store.generation();
        let torn_at = START + 16 + 28; // bank header, then the 28-byte "kept" record
        flash.schedule_cut(PowerCut {
            at_op: flash.op_count(),
            mode: CutMode::Torn,
        });
        assert!(store.put(&mut flash, "torn", &value(40, 2)).is_err());
        flash.power_on();
        if flash.is_erased(CHIP, torn_at, 56).unwrap() {
            continue; // this seed tore nothing
        }
        checked += 1;
        let mut store = Store::mount(&flash, CHIP, START, LEN).unwrap();
        assert_eq!(store.get(&flash, "torn").unwrap(), None);
        assert_eq!(store.get(&flash, "kept").unwrap(), Some(value(16, 1)));
        assert_eq!(store.generation(), generation, "mount does not repair");

        store.put(&mut flash, "next", &value(4, 3)).unwrap();
        assert_eq!(store.generation(), generation + 1, "the write compacted");
        let store = Store::mount(&flash, CHIP, START, LEN).unwrap();
        assert_eq!(
            store.keys().collect::<Vec<_>>(),
            vec!["kept", "next"],
            "seed {seed}"
        );
    }
    assert!(checked >= 12, "only {checked} seeds tore the record");
}

#[test]
fn random_workloads_with_random_cuts_never_lose_or_tear_a_value() {
    const KEYS: [&str; 5] = ["dct", "sys/fw_transfer", "a", "bb", "slot/4"];
    for seed in 0..24u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut flash, mut store) = device(seed);
        let mut model = Model::new();
        let (mut cuts, mut full) = (0, 0);
        for n in 0..300 {
            let key = KEYS[(rng.next_u32() % 5) as usize];
            let step = if rng.next_u32() % 5 == 0 {
                Step::Remove(key)
            } else {
                Step::Put(key, value((rng.next_u32() % 36) as usize, n as u8))
            };
            if rng.next_u32() % 8 == 0 {
                let at_op = flash.op_count() + u64::from(rng.next_u32() % 4);
                let mode = CutMode::ALL[(rng.next_u32() % 3) as usize];
                flash.schedule_cut(PowerCut { at_op, mode });
            }
            match step.apply(&mut flash, &mut store) {
                Ok(()) => step.apply_to_model(&mut model),
                Err(StoreError::Flash(FlashError::PowerLost { .. })) => {
                    cuts += 1;
                    let ctx = format!("seed {seed}, step {n} ({step:?})");
                    store = recover(&mut flash, &mut model, &step, &ctx);
                }
                Err(StoreError::Full { .. }) => {
                    full += 1;
                    let ctx = format!("seed {seed}, step {n}: after Full");
                    assert_eq!(contents(&flash, &store), model, "{ctx}");
                }
                Err(e) => panic!("seed {seed}, step {n}: {e}"),
            }
        }
        assert!(full < 100, "seed {seed}: {full} puts were rejected as Full");
        assert!(cuts > 10, "seed {seed}: only {cuts} cuts fired");
        assert_eq!(contents(&flash, &store), model, "seed {seed}");
    }
}

#[test]
fn values_survive_remount() {
    let (mut flash, mut store) = device(1);
    store.put(&mut flash, "dct/slot1", &value(20, 1)).unwrap();
    store
        .put(&mut flash, "sys/fw_transfer", &value(76, 2))
        .unwrap();
    store.put(&mut flash, "empty", &[]).unwrap();
    let store = Store::mount(&flash, CHIP, START, LEN).unwrap();
    assert_eq!(
        store.keys().collect::<Vec<_>>(),
        vec!["dct/slot1", "empty", "sys/fw_transfer"]
    );
    assert_eq!(
        store.get(&flash, "sys/fw_transfer").unwrap(),
        Some(value(76, 2))
    );
    assert_eq!(store.get(&flash, "empty").unwrap(), Some(Vec::new()));
    assert_eq!(store.get(&flash, "missing").unwrap(), None);
}

#[test]
fn removed_keys_stay_removed_after_remount() {
    let (mut flash, mut store) = device(1);
    store.put(&mut flash, "a", b"1").unwrap();
    store.put(&mut flash, "b", b"2").unwrap();
    assert!(store.remove(&mut flash, "a").unwrap());
    let ops = flash.op_count();
    assert!(!store.remove(&mut flash, "a").unwrap());
    assert_eq!(
        flash.op_count(),
        ops,
        "removing an absent key writes nothing"
    );
    let store = Store::mount(&flash, CHIP, START, LEN).unwrap();
    assert_eq!(store.keys().collect::<Vec<_>>(), vec!["b"]);
}

#[test]
fn overwriting_one_key_forever_compacts_and_keeps_the_latest_value() {
    let (mut flash, mut store) = device(1);
    for i in 0..200u32 {
        store.put(&mut flash, "counter", &i.to_le_bytes()).unwrap();
    }
    assert!(store.generation() > 10);
    let store = Store::mount(&flash, CHIP, START, LEN).unwrap();
    assert_eq!(
        store.get(&flash, "counter").unwrap(),
        Some(199u32.to_le_bytes().to_vec())
    );
    assert_guards_intact(&flash, "after many compactions");
}

#[test]
fn a_full_store_rejects_a_put_without_writing() {
    let (mut flash, mut store) = device(1);
    assert_eq!(store.capacity(), 240);
    for key in ["k1", "k2", "k3"] {
        store.put(&mut flash, key, &value(60, 1)).unwrap(); // 76-byte records
    }
    let ops = flash.op_count();
    assert_eq!(
        store.put(&mut flash, "k4", &value(60, 2)),
        Err(StoreError::Full {
            needed: 4 * 76,
            capacity: 240
        })
    );
    assert_eq!(flash.op_count(), ops);
    // Replacing a value with one of the same size still fits, through compaction.
    store.put(&mut flash, "k1", &value(60, 3)).unwrap();
    store.put(&mut flash, "k1", &value(60, 4)).unwrap();
    assert!(store.remove(&mut flash, "k2").unwrap());
    store.put(&mut flash, "k4", &value(60, 2)).unwrap();
    let store = Store::mount(&flash, CHIP, START, LEN).unwrap();
    assert_eq!(store.get(&flash, "k1").unwrap(), Some(value(60, 4)));
    assert_eq!(store.keys().collect::<Vec<_>>(), vec!["k1", "k3", "k4"]);
}

#[test]
fn oversized_keys_and_values_are_rejected() {
    let (mut flash, mut store) = device(1);
    let long = "k".repeat(MAX_KEY_LEN + 1);
    assert_eq!(
        store.put(&mut flash, &long, b"v"),
        Err(StoreError::KeyTooLong {
            len: 256,
            max: MAX_KEY_LEN
        })
    );
    assert_eq!(
        store.put(&mut flash, "key", &[0; 226]),
        Err(StoreError::ValueTooLarge { len: 226, max: 225 })
    );
    store.put(&mut flash, "key", &[0; 225]).unwrap();
    assert_eq!(store.get(&flash, "key").unwrap(), Some(vec![0; 225]));
}

#[test]
fn an_unformatted_area_does_not_mount_and_mount_or_format_formats_it() {
    let mut flash = FlashArray::new(&[(CHIP, GEOMETRY)], 1).unwrap();
    assert_eq!(
        Store::mount(&flash, CHIP, START, LEN).unwrap_err(),
        StoreError::NotFormatted {
            chip: CHIP,
            start: START
        }
    );
    flash.program(CHIP, START, &[0x12; 64]).unwrap(); // garbage
    assert!(matches!(
        Store::mount(&flash, CHIP, START, LEN),
        Err(StoreError::NotFormatted { .. })
    ));
    let mut store = Store::mount_or_format(&mut flash, CHIP, START, LEN).unwrap();
    store.put(&mut flash, "a", b"1").unwrap();
    let store = Store::mount_or_format(&mut flash, CHIP, START, LEN).unwrap();
    assert_eq!(store.get(&flash, "a").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn an_interrupted_format_mounts_as_unformatted() {
    for at_op in 0..3 {
        for mode in CutMode::ALL {
            let mut flash = FlashArray::new(&[(CHIP, GEOMETRY)], at_op).unwrap();
            flash.schedule_cut(PowerCut { at_op, mode });
            let result = Store::format(&mut flash, CHIP, START, LEN);
            flash.power_on();
            match Store::mount(&flash, CHIP, START, LEN) {
                Ok(store) => {
                    assert!(result.is_err() && store.is_empty());
                    assert_eq!((at_op, mode), (2, CutMode::After));
                }
                Err(StoreError::NotFormatted { .. }) => {}
                Err(e) => panic!("cut {mode:?} at {at_op}: {e}"),
            }
        }
    }
}

#[test]
fn unusable_areas_are_rejected() {
    let mut flash = FlashArray::new(&[(CHIP, GEOMETRY)], 1).unwrap();
    let bad = |r: Result<Store, StoreError>| matches!(r, Err(StoreError::BadArea { .. }));
    assert!(bad(Store::format(&mut flash, CHIP, 0, 256)), "one sector");
    assert!(bad(Store::format(&mut flash, CHIP, 4, 512)), "unaligned");
    assert!(
        bad(Store::format(&mut flash, CHIP, 512, 1024)),
        "past the end"
    );
    assert!(bad(Store::format(&mut flash, CHIP, u32::MAX, u32::MAX)));
    assert!(bad(Store::mount(&flash, ChipId::Internal, 0, 512)));
    assert_eq!(flash.op_count(), 0);
}

#[test]
fn a_stale_store_reloads_itself_after_power_returns() {
    let (mut flash, mut store) = device(1);
    store.put(&mut flash, "a", b"old").unwrap();
    flash.schedule_cut(PowerCut {
        at_op: flash.op_count(),
        mode: CutMode::After,
    });
    assert!(store.put(&mut flash, "a", b"new").is_err());
    flash.power_on();
    // Without a remount the same handle rebuilds its index from flash.
    assert_eq!(store.get(&flash, "a").unwrap(), Some(b"new".to_vec()));
    store.put(&mut flash, "b", b"2").unwrap();
    assert_eq!(store.keys().collect::<Vec<_>>(), vec!["a", "b"]);
}

#[test]
fn records_never_go_where_bytes_are_not_erased() {
    // After a torn put, replay every later operation on a map of which bytes are erased:
    // each program must land on erased bytes only.
    for seed in 0..8 {
        let (mut flash, mut store) = device(seed);
        store.put(&mut flash, "a", &value(30, 1)).unwrap();
        flash.schedule_cut(PowerCut {
            at_op: flash.op_count(),
            mode: CutMode::Torn,
        });
        let _ = store.put(&mut flash, "b", &value(30, 2));
        flash.power_on();
        let mut erased: Vec<bool> = flash
            .read_vec(CHIP, 0, GEOMETRY.size as usize)
            .unwrap()
            .iter()
            .map(|&b| b == ERASED)
            .collect();
        let mut store = Store::mount(&flash, CHIP, START, LEN).unwrap();
        flash.enable_log();
        for i in 0..40u8 {
            store.put(&mut flash, "c", &value(10, i)).unwrap();
        }
        assert!(store.generation() > 3);
        for op in flash.take_log() {
            let range = op.addr as usize..(op.addr + op.len) as usize;
            match op.kind {
                OpKind::Erase => erased[range].fill(true),
                OpKind::Program => {
                    assert!(
                        erased[range.clone()].iter().all(|&e| e),
                        "seed {seed}: op {} programs over data at {:#x}",
                        op.seq,
                        op.addr
                    );
                    erased[range].fill(false);
                }
            }
        }
    }
}

#[test]
fn stray_bytes_after_the_log_are_never_appended_over() {
    // A write that left the next record header erased but bytes further on programmed (not a
    // tear this flash model produces, but one real parts might) must not be appended over.
    let (mut flash, mut store) = device(1);
    store.put(&mut flash, "a", b"1234").unwrap();
    let generation = store.generation();
    flash.program(CHIP, START + 200, &[0x00; 4]).unwrap();
    let mut store = Store::mount(&flash, CHIP, START, LEN).unwrap();
    store.put(&mut flash, "b", b"5678").unwrap();
    assert_eq!(store.generation(), generation + 1, "the write compacted");
    let store = Store::mount(&flash, CHIP, START, LEN).unwrap();
    assert_eq!(store.get(&flash, "a").unwrap(), Some(b"1234".to_vec()));
    assert_eq!(store.get(&flash, "b").unwrap(), Some(b"5678".to_vec()));
}
