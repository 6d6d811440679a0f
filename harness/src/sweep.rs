//! The power-cut sweep: cut power at every flash operation between "slot committed" and "new
//! firmware running", in every mode, and check after every cut that the device still boots a
//! valid image (reference 5.3-5.5; the discipline is MCUboot's simulator's).
//!
//! One clean run counts the flash operations of the window: the DCT slot commit, then the boot
//! that applies the update. Then, for every operation `n` of the window and every [`CutMode`],
//! a copy-on-write snapshot of the device taken just before the commit is cut at `n`, powered
//! on, and booted again and again (optionally cut again during those recovery boots, at seeded
//! random points) until a boot completes. Checked after every completed boot:
//! - the device runs (no safe mode, not unbootable);
//! - what runs is exactly the old firmware or exactly the new, never a mix;
//! - every module the bootloader reports valid is byte-for-byte a known image for its region
//!   (nothing half-written is ever reported valid);
//! - once the commit has completed, the first completed boot runs the new firmware, nothing is
//!   left pending, and a further boot changes nothing.

use std::collections::BTreeMap;

use emulator::board::RegionKind;
use emulator::bootloader::{BootError, BootReport, BootState, ModuleStatus};
use emulator::device::{Device, StagedModule};
use emulator::flash::CutMode;
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
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            modes: vec![CutMode::Before, CutMode::Torn, CutMode::After],
            extra_cuts: 0,
            seed: 0,
            only_op: None,
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

/// What is installed after a boot, per region: `Some(bytes)` of the valid module, `None` when
/// the region has no valid module.
type Installed = BTreeMap<RegionKind, Option<Vec<u8>>>;

fn installed(device: &Device, report: &BootReport) -> Result<Installed, String> {
    let mut out = BTreeMap::new();
    for m in &report.modules {
        let bytes = match (&m.status, m.start, m.size) {
            (ModuleStatus::Valid, Some(start), Some(size)) => {
                let region = device
                    .board()
                    .region(m.region)
                    .ok_or_else(|| format!("report names region {:?} the board lacks", m.region))?;
                let chip = device.board().flash_chip(region.chip);
                Some(
                    device
                        .flash()
                        .read_vec(chip, start, size as usize)
                        .map_err(|e| e.to_string())?,
                )
            }
            _ => None,
        };
        out.insert(m.region, bytes);
    }
    Ok(out)
}

/// The expected contents of every region for a firmware set, in the same shape as [`Installed`].
fn expected(
    case: &SweepCase,
    set: &BTreeMap<RegionKind, Vec<u8>>,
    sample: &Installed,
) -> Installed {
    sample
        .keys()
        .map(|k| (*k, set.get(k).or_else(|| case.old.get(k)).cloned()))
        .collect()
}

/// Checks one completed boot. Returns which firmware runs (`false` old, `true` new).
fn judge(case: &SweepCase, device: &Device, report: &BootReport) -> Result<bool, String> {
    if report.state != BootState::Running {
        return Err(format!(
            "device does not run its application: {:?}",
            report.state
        ));
    }
    let now = installed(device, report)?;
    for (region, bytes) in &now {
        if let Some(bytes) = bytes {
            let known = case.old.get(region) == Some(bytes) || case.new.get(region) == Some(bytes);
            if !known {
                return Err(format!("{region:?} holds a module reported valid that is neither the old nor the new image"));
            }
        }
    }
    let old = expected(case, &case.old, &now);
    let new = expected(case, &case.new, &now);
    if now == new {
        Ok(true)
    } else if now == old {
        Ok(false)
    } else {
        let mixed: Vec<String> = now
            .iter()
            .map(|(k, v)| {
                let which = if v.is_some() && v == new.get(k).unwrap_or(&None) {
                    "new"
                } else if v.is_some() && v == old.get(k).unwrap_or(&None) {
                    "old"
                } else {
                    "none"
                };
                format!("{k:?}={which}")
            })
            .collect();
        Err(format!(
            "the device runs a mix of old and new firmware: {}",
            mixed.join(", ")
        ))
    }
}

/// Runs the sweep for one case.
pub fn sweep(case: &SweepCase, config: &SweepConfig) -> Result<SweepReport, SweepError> {
    let clean_err = |problem: String| SweepError::CleanRun {
        case: case.name.clone(),
        problem,
    };

    // Clean run: count the window.
    let mut clean = case.device.clone();
    let start = clean.flash().op_count();
    clean
        .commit_staged(&case.staged)
        .map_err(|e| clean_err(e.to_string()))?;
    let commit_end = clean.flash().op_count();
    let report = clean.boot().map_err(|e| clean_err(e.to_string()))?;
    let end = clean.flash().op_count();
    match judge(case, &clean, &report) {
        Ok(true) => {}
        Ok(false) => {
            return Err(clean_err(
                "the new firmware does not run after a clean update".into(),
            ))
        }
        Err(problem) => return Err(clean_err(problem)),
    }

    let mut out = SweepReport {
        case: case.name.clone(),
        window: (start, end),
        commit_ops: commit_end - start,
        ..SweepReport::default()
    };
    for op in start..end {
        if config.only_op.is_some_and(|only| only != op) {
            continue;
        }
        for &mode in &config.modes {
            out.runs += 1;
            if let Err(problem) = run_one(case, config, op, mode, commit_end, &mut out) {
                out.failures.push(problem);
            }
        }
    }
    Ok(out)
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
    case: &SweepCase,
    config: &SweepConfig,
    op: u64,
    mode: CutMode,
    commit_end: u64,
    out: &mut SweepReport,
) -> Result<(), SweepFailure> {
    let mut extra = Vec::new();
    let fail = |problem: String, extra: &Vec<u64>| SweepFailure {
        case: case.name.clone(),
        op,
        mode,
        extra_cuts: extra.clone(),
        seed: config.seed,
        problem,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(run_seed(config.seed, op, mode));
    let mut device = case.device.clone();
    device.schedule_cut(op, mode);

    let mut cut_seen = false;
    match device.commit_staged(&case.staged) {
        Ok(()) => {}
        Err(e) if e.is_power_loss() => {
            cut_seen = true;
            out.cuts += 1;
            device.power_on();
        }
        Err(e) => return Err(fail(format!("commit failed: {e}"), &extra)),
    }
    // Past the commit's last operation the update is committed for sure.
    let committed_for_sure = op >= commit_end;

    let mut extra_left = config.extra_cuts;
    // Each boot either completes or is cut; cuts are finite, so this ends. The bound guards
    // against a bootloader that never finishes.
    for _ in 0..(config.extra_cuts as usize + 4) {
        if cut_seen && extra_left > 0 {
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
                let runs_new = judge(case, &device, &report).map_err(|p| fail(p, &extra))?;
                if !cut_seen {
                    return Err(fail("the scheduled power cut never fired".into(), &extra));
                }
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
                    || judge(case, &device, &again).map_err(|p| fail(p, &extra))? != runs_new
                {
                    return Err(fail(
                        "a second boot changed the installed firmware".into(),
                        &extra,
                    ));
                }
                return Ok(());
            }
            Err(BootError::PowerLost(_)) => {
                cut_seen = true;
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
}
