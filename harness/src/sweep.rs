//! The power-cut sweep: cut power at every flash operation between "slot committed" and "new
//! firmware running", in every mode, and check after every cut that the device still boots a
//! valid image (reference 5.3-5.5; the discipline is MCUboot's simulator's).
//!
//! One clean run counts the flash operations of the window: the DCT slot commit, then the boot
//! that applies the update, keeping a copy-on-write snapshot of the flash before each of them.
//! Then, for every operation `n` of the window and every [`CutMode`], the snapshot before `n`
//! has operation `n` done again with the cut (exactly what a run replayed from the commit would
//! leave: the same code on the same bytes), is powered on, and booted again and again
//! (optionally cut again during those recovery boots, at seeded random points) until a boot
//! completes. Checked after every completed boot:
//! - the device runs (no safe mode, not unbootable);
//! - what runs is exactly the old firmware or exactly the new, never a mix;
//! - every module the bootloader reports valid is byte-for-byte a known image for its region
//!   (nothing half-written is ever reported valid);
//! - once the commit has completed, the first completed boot runs the new firmware, nothing is
//!   left pending, and a further boot changes nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use emulator::board::RegionKind;
use emulator::bootloader::{BootError, BootReport, BootState, ModuleStatus};
use emulator::device::{Device, StagedModule};
use emulator::flash::{CutMode, OpSnapshot, SectorCopies};
use emulator::installed::RegionContent;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// What a sweep runs: a provisioned device with the update staged but not committed, and the
/// images that may legitimately be found in each region.
#[derive(Debug, Clone)]
pub struct SweepCase {
    pub name: String,
    /// The device just before the commit: old firmware installed, update file staged.
    pub device: Device,
    /// The staged modules, validated, with the slots the commit writes.
    pub staged: Vec<StagedModule>,
    /// Region contents of the old firmware (as programmed).
    pub old: BTreeMap<RegionKind, Vec<u8>>,
    /// Region contents once the update is applied (inflated where compressed).
    pub new: BTreeMap<RegionKind, Vec<u8>>,
}

/// How hard to sweep.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub modes: Vec<CutMode>,
    /// Further cuts during the recovery boots after the first one (0 = one cut per run).
    pub extra_cuts: u32,
    /// Seeds the torn bits and the extra cut points; printed with every failure.
    pub seed: u64,
    /// Replay one cut point only: the absolute operation number a failure printed.
    pub only_op: Option<u64>,
    /// Threads the cut points are spread over (the report is the same for any count).
    pub threads: usize,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            modes: vec![CutMode::Before, CutMode::Torn, CutMode::After],
            extra_cuts: 0,
            seed: 0,
            only_op: None,
            threads: 1,
        }
    }
}

/// One violated invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepFailure {
    pub case: String,
    /// Operation number of the first cut.
    pub op: u64,
    pub mode: CutMode,
    /// Operation numbers of any further cuts that fired.
    pub extra_cuts: Vec<u64>,
    pub seed: u64,
    pub problem: String,
}

impl std::fmt::Display for SweepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            CutMode::Before => "before",
            CutMode::Torn => "torn",
            CutMode::After => "after",
        };
        write!(f, "{}: cut {mode} at flash op {}", self.case, self.op)?;
        if !self.extra_cuts.is_empty() {
            let ops: Vec<String> = self.extra_cuts.iter().map(u64::to_string).collect();
            write!(f, " (further cuts at ops {})", ops.join(", "))?;
        }
        write!(f, ", seed {}: {}", self.seed, self.problem)
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    pub case: String,
    /// First and one-past-last operation number of the window.
    pub window: (u64, u64),
    /// Operations in the window that belong to the commit (the rest are the apply boot).
    pub commit_ops: u64,
    pub runs: u64,
    pub cuts: u64,
    pub boots: u64,
    /// Runs whose first completed boot still ran the old firmware (the cut beat the commit).
    pub old_kept: u64,
    pub failures: Vec<SweepFailure>,
}

/// Errors that stop a sweep before it can judge anything.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("{case}: the clean run failed: {problem}")]
    CleanRun { case: String, problem: String },
}

/// What a valid module's bytes were found to be, remembered per region contents (see
/// [`Judge`]).
#[derive(Debug, Clone, Copy)]
struct Match {
    /// Byte for byte the old image of its region.
    old: bool,
    /// Byte for byte the new image of its region.
    new: bool,
}

/// Checks completed boots. Region contents come through the device's boot caches, so a region
/// that did not change since the last check is the same `Arc`, and its comparison with the
/// old and new images (a byte-for-byte compare) is remembered instead of repeated.
struct Judge<'c> {
    case: &'c SweepCase,
    seen: Vec<(RegionKind, Arc<RegionContent>, Match)>,
}

/// Comparisons remembered by one [`Judge`] before it starts again.
const JUDGE_MEMORY: usize = 32;

impl<'c> Judge<'c> {
    fn new(case: &'c SweepCase) -> Self {
        Judge {
            case,
            seen: Vec::new(),
        }
    }

    /// How the valid module the report names in `region` compares with the known images.
    fn compare(
        &mut self,
        device: &Device,
        region: RegionKind,
        start: u32,
        size: u32,
    ) -> Result<Match, String> {
        let content = device
            .region_content(region)
            .map_err(|e| format!("report names region {region:?}: {e}"))?;
        if let Some((_, _, m)) = self
            .seen
            .iter()
            .find(|(k, c, _)| *k == region && Arc::ptr_eq(c, &content))
        {
            return Ok(*m);
        }
        let RegionContent::Module(found) = &*content else {
            return Err(format!("{region:?} is reported valid but holds no module"));
        };
        if found.start != start || found.bytes.len() != size as usize {
            return Err(format!(
                "{region:?} is reported valid at {start:#x}+{size} but holds a module at {:#x}+{}",
                found.start,
                found.bytes.len()
            ));
        }
        let bytes = found.bytes.as_slice();
        let m = Match {
            old: self.case.old.get(&region).is_some_and(|b| b == bytes),
            new: self.case.new.get(&region).is_some_and(|b| b == bytes),
        };
        if self.seen.len() >= JUDGE_MEMORY {
            self.seen.clear();
        }
        self.seen.push((region, content, m));
        Ok(m)
    }

    /// Checks one completed boot. Returns which firmware runs (`false` old, `true` new).
    fn judge(&mut self, device: &Device, report: &BootReport) -> Result<bool, String> {
        if report.state != BootState::Running {
            return Err(format!(
                "device does not run its application: {:?}",
                report.state
            ));
        }
        // Per region: whether it holds what the old firmware set has there, and what the new
        // one has there (the old image where the update does not touch the region; nothing
        // valid where a set has no image).
        let mut all_old = true;
        let mut all_new = true;
        let mut which = Vec::with_capacity(report.modules.len());
        for m in &report.modules {
            let k = m.region;
            let updated = self.case.new.contains_key(&k);
            let (is_old, is_new, label) = match (&m.status, m.start, m.size) {
                (ModuleStatus::Valid, Some(start), Some(size)) => {
                    let found = self.compare(device, k, start, size)?;
                    if !(found.old || found.new) {
                        return Err(format!("{k:?} holds a module reported valid that is neither the old nor the new image"));
                    }
                    let is_new = if updated { found.new } else { found.old };
                    let label = if is_new {
                        "new"
                    } else if found.old {
                        "old"
                    } else {
                        "none"
                    };
                    (found.old, is_new, label)
                }
                _ => {
                    let old_none = !self.case.old.contains_key(&k);
                    (old_none, old_none && !updated, "none")
                }
            };
            all_old &= is_old;
            all_new &= is_new;
            which.push(format!("{k:?}={label}"));
        }
        if all_new {
            Ok(true)
        } else if all_old {
            Ok(false)
        } else {
            Err(format!(
                "the device runs a mix of old and new firmware: {}",
                which.join(", ")
            ))
        }
    }
}

/// Checks one completed boot. Returns which firmware runs (`false` old, `true` new).
#[cfg(test)]
fn judge(case: &SweepCase, device: &Device, report: &BootReport) -> Result<bool, String> {
    Judge::new(case).judge(device, report)
}

/// Runs the sweep for one case.
///
/// The clean run records a snapshot of the flash before every operation of the window; each
/// cut run starts from the snapshot of its operation (the operation is done again on it with
/// the cut, through the same flash code), so the commit and the part of the apply before the
/// cut are not replayed: they are the clean run's, operation for operation. The forks share
/// the device's boot caches, so the modules the update does not touch (and the staged file)
/// are parsed once. Cut points run on `config.threads` threads; the report does not depend on
/// the count.
pub fn sweep(case: &SweepCase, config: &SweepConfig) -> Result<SweepReport, SweepError> {
    let clean_err = |problem: String| SweepError::CleanRun {
        case: case.name.clone(),
        problem,
    };

    let mut base = case.device.clone();
    base.share_boot_caches();

    // Clean run: count the window, keeping a snapshot before each of its operations.
    let mut clean = base.clone();
    clean.flash_mut().record_snapshots();
    let start = clean.flash().op_count();
    clean
        .commit_staged(&case.staged)
        .map_err(|e| clean_err(e.to_string()))?;
    let commit_end = clean.flash().op_count();
    let report = clean.boot().map_err(|e| clean_err(e.to_string()))?;
    let end = clean.flash().op_count();
    let snapshots = clean.flash_mut().take_snapshots();
    if snapshots.len() as u64 != end - start
        || snapshots
            .iter()
            .zip(start..)
            .any(|(snap, op)| snap.seq() != op)
    {
        return Err(clean_err(
            "the clean run's flash snapshots do not cover its window".into(),
        ));
    }
    match Judge::new(case).judge(&clean, &report) {
        Ok(true) => {}
        Ok(false) => {
            return Err(clean_err(
                "the new firmware does not run after a clean update".into(),
            ))
        }
        Err(problem) => return Err(clean_err(problem)),
    }

    let points: Vec<(u64, CutMode)> = (start..end)
        .filter(|op| config.only_op.is_none_or(|only| only == *op))
        .flat_map(|op| config.modes.iter().map(move |&mode| (op, mode)))
        .collect();
    let run_at = |base: &Device,
                  snapshots: &[OpSnapshot],
                  judge: &mut Judge,
                  &(op, mode): &(u64, CutMode)| {
        let mut tally = RunTally::default();
        let snapshot = &snapshots[(op - start) as usize];
        let result = run_one(base, judge, config, snapshot, mode, commit_end, &mut tally);
        (tally, result.err())
    };
    let threads = config.threads.clamp(1, points.len().max(1));
    let mut results: Vec<(usize, (RunTally, Option<SweepFailure>))> = if threads == 1 {
        let mut judge = Judge::new(case);
        points
            .iter()
            .enumerate()
            .map(|(i, p)| (i, run_at(&base, &snapshots, &mut judge, p)))
            .collect()
    } else {
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        // Each thread forks from its own copy of the snapshots and keeps its
                        // own boot caches: shared buffers would have both threads update the
                        // same reference counts at every fork.
                        let mut copies = SectorCopies::default();
                        let snapshots: Vec<OpSnapshot> = snapshots
                            .iter()
                            .map(|s| s.private_copy(&mut copies))
                            .collect();
                        drop(copies);
                        let mut base = base.clone();
                        base.fresh_boot_caches();
                        let mut judge = Judge::new(case);
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(p) = points.get(i) else { break };
                            done.push((i, run_at(&base, &snapshots, &mut judge, p)));
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        })
    };
    results.sort_by_key(|(i, _)| *i);

    let mut out = SweepReport {
        case: case.name.clone(),
        window: (start, end),
        commit_ops: commit_end - start,
        ..SweepReport::default()
    };
    if results.len() != points.len() {
        return Err(clean_err(format!(
            "{} of {} cut points ran (a worker thread died)",
            results.len(),
            points.len()
        )));
    }
    for (_, (tally, failure)) in results {
        out.runs += 1;
        out.cuts += tally.cuts;
        out.boots += tally.boots;
        out.old_kept += tally.old_kept;
        out.failures.extend(failure);
    }
    Ok(out)
}

/// What one cut run counted.
#[derive(Debug, Default)]
struct RunTally {
    cuts: u64,
    boots: u64,
    old_kept: u64,
}

/// Seed for the extra cuts of one run, from the sweep seed and the run's coordinates.
fn run_seed(seed: u64, op: u64, mode: CutMode) -> u64 {
    let m = match mode {
        CutMode::Before => 1,
        CutMode::Torn => 2,
        CutMode::After => 3,
    };
    seed ^ op.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (m << 56)
}

fn run_one(
    base: &Device,
    judge: &mut Judge,
    config: &SweepConfig,
    snapshot: &OpSnapshot,
    mode: CutMode,
    commit_end: u64,
    out: &mut RunTally,
) -> Result<(), SweepFailure> {
    let op = snapshot.seq();
    let mut extra = Vec::new();
    let fail = |problem: String, extra: &Vec<u64>| SweepFailure {
        case: judge.case.name.clone(),
        op,
        mode,
        extra_cuts: extra.clone(),
        seed: config.seed,
        problem,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(run_seed(config.seed, op, mode));

    // The device as the cut at `op` leaves it, then powered on again.
    let Some(flash) = snapshot.cut(mode) else {
        return Err(fail("the scheduled power cut never fired".into(), &extra));
    };
    let mut device = base.with_flash(flash);
    device.power_on();
    out.cuts += 1;
    if op >= commit_end {
        // The cut interrupted the boot that applies the update.
        out.boots += 1;
    }
    // Past the commit's last operation the update is committed for sure.
    let committed_for_sure = op >= commit_end;

    let mut extra_left = config.extra_cuts;
    // Each boot either completes or is cut; cuts are finite, so this ends. The bound guards
    // against a bootloader that never finishes.
    for _ in 0..(config.extra_cuts as usize + 4) {
        if extra_left > 0 {
            // Count the ops a recovery boot takes from here, then cut at a random one of them.
            let mut probe = device.clone();
            let before = probe.flash().op_count();
            if probe.boot().is_ok() {
                let span = probe.flash().op_count() - before;
                if span > 0 {
                    let at = before + rng.next_u64() % span;
                    let mode = config.modes[(rng.next_u32() as usize) % config.modes.len()];
                    device.schedule_cut(at, mode);
                    extra.push(at);
                }
            }
            extra_left -= 1;
        }
        out.boots += 1;
        match device.boot() {
            Ok(report) => {
                // The first completed boot of the run: the one that must run the new firmware
                // whenever the commit went through.
                let runs_new = judge.judge(&device, &report).map_err(|p| fail(p, &extra))?;
                if committed_for_sure && !runs_new {
                    return Err(fail(
                        "the update was committed but the old firmware runs".into(),
                        &extra,
                    ));
                }
                if !runs_new {
                    out.old_kept += 1;
                }
                let pending = device
                    .pending_slots()
                    .map_err(|e| fail(e.to_string(), &extra))?;
                if !pending.is_empty() {
                    return Err(fail(
                        format!(
                            "{} slot(s) still pending after a completed boot",
                            pending.len()
                        ),
                        &extra,
                    ));
                }
                // One more boot must change nothing.
                let again = device
                    .boot()
                    .map_err(|e| fail(format!("second boot failed: {e}"), &extra))?;
                out.boots += 1;
                if !again.applied.is_empty()
                    || judge.judge(&device, &again).map_err(|p| fail(p, &extra))? != runs_new
                {
                    return Err(fail(
                        "a second boot changed the installed firmware".into(),
                        &extra,
                    ));
                }
                return Ok(());
            }
            Err(BootError::PowerLost(_)) => {
                out.cuts += 1;
                device.power_on();
            }
            Err(e) => return Err(fail(format!("boot failed: {e}"), &extra)),
        }
    }
    Err(fail("no boot completed".into(), &extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::{build, SweepCaseKind};
    use emulator::board::Board;
    use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};

    fn case(kind: SweepCaseKind) -> (Board, SweepCase) {
        let board = Board::builtin("boron").unwrap();
        let case = build(&board, kind, &ModuleSizes::default(), 1).unwrap();
        (board, case)
    }

    #[test]
    fn judge_rejects_a_valid_module_that_is_neither_old_nor_new() {
        let (board, case) = case(SweepCaseKind::UserPart);
        let mut device = case.device.clone();
        let stranger = Versions {
            product_version: 77,
            ..Versions::BASELINE
        };
        let image = FirmwareSet::new(&board, ModuleSizes::default(), 1)
            .module(RegionKind::UserPart, &stranger, 8192)
            .unwrap();
        device.program_module(&image).unwrap();
        let report = device.boot().unwrap();
        let err = judge(&case, &device, &report).unwrap_err();
        assert!(err.contains("neither the old nor the new"), "{err}");
    }

    #[test]
    fn judge_rejects_a_mix_of_old_and_new_modules() {
        let (_, case) = case(SweepCaseKind::CombinedSystemAndUser);
        let mut device = case.device.clone();
        // Only the new system part installed (as the bootloader copies it, COMBINED flag and
        // all); the user part stays old.
        let image = &case.new[&RegionKind::SystemPart];
        let region = device
            .board()
            .region(RegionKind::SystemPart)
            .unwrap()
            .clone();
        let chip = device.board().flash_chip(region.chip);
        let mut padded = image.clone();
        padded.resize(image.len().div_ceil(4) * 4, 0xFF);
        let flash = device.flash_mut();
        flash
            .erase_range(
                chip,
                region.start,
                (padded.len() as u32).div_ceil(4096) * 4096,
            )
            .unwrap();
        flash.program(chip, region.start, &padded).unwrap();
        let report = device.boot().unwrap();
        let err = judge(&case, &device, &report).unwrap_err();
        assert!(err.contains("mix"), "{err}");
    }

    #[test]
    fn judge_tells_old_from_new() {
        let (_, case) = case(SweepCaseKind::UserPart);
        let mut device = case.device.clone();
        let report = device.boot().unwrap();
        assert_eq!(judge(&case, &device, &report), Ok(false));
        device
            .program_module(&case.new[&RegionKind::UserPart])
            .unwrap();
        let report = device.boot().unwrap();
        assert_eq!(judge(&case, &device, &report), Ok(true));
    }

    #[test]
    fn one_judge_with_boot_caches_sees_a_region_change_after_it_compared_it() {
        let (_, case) = case(SweepCaseKind::UserPart);
        let mut device = case.device.clone();
        device.share_boot_caches();
        let mut judge = Judge::new(&case);
        let report = device.boot().unwrap();
        assert_eq!(judge.judge(&device, &report), Ok(false));
        assert_eq!(judge.judge(&device, &report), Ok(false));
        device
            .program_module(&case.new[&RegionKind::UserPart])
            .unwrap();
        let report = device.boot().unwrap();
        assert!(report.valid_version(RegionKind::UserPart).is_some());
        assert_eq!(judge.judge(&device, &report), Ok(true));
    }
}
