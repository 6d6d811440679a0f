//! Fleet simulation: thousands of emulated devices, each running the real protocol (DTLS
//! handshake, CoAP, OTA v3, flash writes) against the real local Device Cloud on one simulated
//! network, in virtual time, with behaviour schedules drawn from one seed. A release manager's
//! questions — how long until 95 % run v7, how many devices were hit while busy, what a 2 %
//! power-loss rate does, whether an abort rule catches a bad build — are answered by running
//! the fleet, not by a model of it.
//!
//! - [`model`]: the `[fleet]` scenario files (`fixtures/fleet/`, syntax in
//!   `fixtures/README.md`).
//! - [`device`]: one device node, its power / network / application schedule and its share
//!   of the live counts.
//! - [`curve`]: the per-minute counts and their CSV, JSON, SVG and PNG forms.
//! - [`report`]: a run in `hil run`'s JUnit and JSON reports.
//! - [`run`]: builds the fleet (devices with the same firmware share their flash sectors,
//!   copy-on-write) and runs it; the same seed gives the same curve.
//!
//! The cloud decides everything a cloud decides (releases, staged rollouts and their abort
//! rules, `cloud::rollout`); this runner only presses the release manager's buttons at the
//! times the file gives and looks at the devices.

pub mod curve;
pub mod device;
pub mod model;
mod png;
pub mod report;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use emulator::board::RegionKind;
use emulator::firmware::{FirmwareError, FirmwareSet, ModuleSizes, Versions};
use emulator::os::{AppBehaviour, DeviceOs, Identity};
use p256::ecdsa::SigningKey;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::cloud::fleet::{DeviceChange, FleetError, Release};
use crate::cloud::{Cloud, CloudConfig, DeviceId};
use crate::net::sim::{LinkFaults, NodeId, SimError, SimNetwork};
use crate::net::Node;
use crate::testbed::CLOUD_ADDR;

pub use curve::Curve;
pub use device::{CohortCounts, FleetDevice, Tally};
pub use model::{load, Expect, FleetFileError, FleetScenario};

/// Why a fleet run stopped before its end (not a failed expectation: those are in the
/// result). Each names the seed that replays it.
#[derive(Debug, thiserror::Error)]
pub enum FleetRunError {
    #[error("seed {seed}: building firmware: {source}")]
    Firmware { seed: u64, source: FirmwareError },
    #[error("seed {seed}: the cloud refused {what}: {source}")]
    Cloud {
        seed: u64,
        what: String,
        source: FleetError,
    },
    #[error(transparent)]
    Sim(#[from] SimError),
}

/// The cloud as a node of the fleet's network. Its event stream is not kept (a fleet's is
/// millions of lines): the staged rollouts read it inside the cloud as it is made, and the
/// counts come from the devices.
pub struct FleetCloud {
    pub cloud: Cloud,
    pub events: u64,
}

impl FleetCloud {
    fn drain(&mut self) {
        while self.cloud.poll_event().is_some() {
            self.events += 1;
        }
    }
}

impl Node for FleetCloud {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]) {
        self.cloud.handle_datagram(now, from, data);
        self.drain();
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.cloud.handle_timeout(now);
        self.drain();
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.cloud.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Duration> {
        self.cloud.poll_timeout()
    }
}

/// One checked expectation.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub what: String,
    pub passed: bool,
    /// What was found.
    pub found: String,
}

/// The staged rollout at the end of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSummary {
    pub version: u16,
    pub state: String,
    pub stage: usize,
    pub stages: usize,
    pub counts: crate::cloud::rollout::RolloutCounts,
    pub log: Vec<(Duration, String)>,
}

/// Counters of the whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub devices: u64,
    /// Full DTLS handshakes and session resumptions devices started.
    pub handshakes: u64,
    pub resumptions: u64,
    pub datagrams: u64,
    pub cloud_events: u64,
    pub updated_while_busy: u64,
    pub power_losses_during_update: u64,
}

/// What a fleet run found.
#[derive(Debug, Clone)]
pub struct FleetRun {
    pub name: String,
    pub seed: u64,
    pub curve: Curve,
    pub checks: Vec<Check>,
    pub rollout: Option<RolloutSummary>,
    pub stats: RunStats,
}

impl FleetRun {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// A few lines for a person: the checks (with the seed on a failure), the milestones of
    /// each cohort, the rollout.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "ok  " } else { "FAIL" };
        out.push_str(&format!(
            "{verdict} {} ({} devices, seed {}, {} of virtual time)\n",
            self.name,
            self.stats.devices,
            self.seed,
            crate::scenario::model::format_duration(self.curve.end())
        ));
        for c in &self.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            out.push_str(&format!("  {mark} {}: {}\n", c.what, c.found));
        }
        for line in self.curve.milestones() {
            out.push_str(&format!("  {line}\n"));
        }
        if let Some(r) = &self.rollout {
            out.push_str(&format!(
                "  staged rollout of app {}: {} at stage {} of {} ({} admitted, {} succeeded, \
                 {} failed, {} timed out, {} in safe mode)\n",
                r.version,
                r.state,
                r.stage,
                r.stages,
                r.counts.admitted,
                r.counts.succeeded,
                r.counts.failed,
                r.counts.timed_out,
                r.counts.safe_mode
            ));
            for (at, line) in &r.log {
                out.push_str(&format!(
                    "    {:>8} {line}\n",
                    crate::scenario::model::format_duration(*at)
                ));
            }
        }
        out.push_str(&format!(
            "  {} full handshakes, {} resumptions, {} datagrams, {} power losses during \
             updates, {} transfers started while busy\n",
            self.stats.handshakes,
            self.stats.resumptions,
            self.stats.datagrams,
            self.stats.power_losses_during_update,
            self.stats.updated_while_busy
        ));
        if !self.passed() {
            out.push_str(&format!(
                "  replay: hil run --seed {} {}\n",
                self.seed,
                self.curve.file.display()
            ));
        }
        out
    }
}

/// A fleet built and ready to run (the benchmark measures building and running apart).
pub struct Fleet {
    scenario: FleetScenario,
    seed: u64,
    net: SimNetwork,
    cloud: NodeId,
    tally: Rc<RefCell<Tally>>,
}

/// The address of device number `n`: one address each, so no port range runs out.
fn device_ip(n: u64) -> IpAddr {
    let n = n + 1;
    IpAddr::from([10, 1 + ((n >> 16) & 0xFF) as u8, (n >> 8) as u8, n as u8])
}

impl Fleet {
    /// Builds the cloud (product, firmware, devices in their groups) and the devices. Devices
    /// of one cohort start from one provisioned flash image, cloned: their sectors are shared
    /// until a device writes one (copy-on-write, `emulator::flash`), and a sector a device
    /// completes is shared with every other holding the same bytes
    /// (`FlashArray::share_identical_sectors`).
    pub fn build(scenario: &FleetScenario, seed: Option<u64>) -> Result<Fleet, FleetRunError> {
        let seed = seed.unwrap_or(scenario.seed);
        let s = scenario;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xF1EE_7000);
        let server_key = SigningKey::random(&mut rng);
        let mut cloud = Cloud::new(CloudConfig::new(server_key.clone()), seed);
        let cloud_err = |what: String| move |source| FleetRunError::Cloud { seed, what, source };
        let board = &s.cohorts[0].board;
        cloud
            .create_product(s.product, "fleet", board.platform_id)
            .map_err(cloud_err(format!("product {}", s.product)))?;
        // One firmware seed for uploads and devices: a device's v3 is byte for byte the
        // product's v3.
        let fw_seed = seed ^ 0xF1A5;
        let sizes = ModuleSizes::default();
        let versions = |app: u16| Versions {
            product_version: app,
            ..Versions::BASELINE
        };
        for (app, _) in &s.firmware {
            let file = FirmwareSet::new(board, sizes, fw_seed)
                .module(RegionKind::UserPart, &versions(*app), sizes.user_part)
                .map_err(|source| FleetRunError::Firmware { seed, source })?;
            cloud
                .upload_firmware(
                    Duration::ZERO,
                    s.product,
                    *app,
                    &format!("v{app}"),
                    "",
                    file,
                )
                .map_err(cloud_err(format!("the upload of app {app}")))?;
        }
        let bad: Rc<[u16]> = s
            .firmware
            .iter()
            .filter(|(_, bad)| *bad)
            .map(|(v, _)| *v)
            .collect();
        let tally = Rc::new(RefCell::new(Tally {
            cohorts: vec![CohortCounts::default(); s.cohorts.len()],
            ..Tally::default()
        }));
        let server_addr: SocketAddr = CLOUD_ADDR.parse().expect("a valid constant address");
        let server_public = *server_key.verifying_key();
        let mut nodes = Vec::new();
        let mut n: u64 = 0;
        for (ci, c) in s.cohorts.iter().enumerate() {
            let (mut template, _) = FirmwareSet::new(&c.board, sizes, fw_seed)
                .provision(&versions(c.app))
                .map_err(|source| FleetRunError::Firmware { seed, source })?;
            // Sectors the devices complete later (an update's, the bootloader's copy of it)
            // are shared by content too, so a fleet that downloads one release holds it once.
            template.flash_mut().share_identical_sectors();
            let groups: BTreeSet<String> = c.groups.iter().cloned().collect();
            for _ in 0..c.count {
                let key = SigningKey::random(&mut rng);
                let mut id = [0u8; 12];
                rng.fill_bytes(&mut id);
                let identity = Identity {
                    device_id: id,
                    server_key: server_public,
                    key,
                };
                cloud.register_device(id, identity.public_key());
                let device_id = DeviceId(id);
                cloud
                    .add_product_device(Duration::ZERO, s.product, device_id)
                    .map_err(cloud_err(format!("device {device_id}")))?;
                if !groups.is_empty() {
                    let change = DeviceChange {
                        groups: Some(groups.clone()),
                        ..DeviceChange::default()
                    };
                    cloud
                        .change_product_device(Duration::ZERO, s.product, device_id, &change, false)
                        .map_err(cloud_err(format!("the groups of device {device_id}")))?;
                }
                let dev_seed = rng.next_u64();
                let os = DeviceOs::new(
                    identity,
                    template.clone(),
                    AppBehaviour::default(),
                    dev_seed,
                );
                let mut dev_rng = ChaCha8Rng::seed_from_u64(dev_seed ^ 0xBE4A);
                let boot_at = device::uniform(&mut dev_rng, s.boot_spread);
                let link = c.behaviour.link.map(|l| {
                    let base = l.latency.map_or(Duration::from_millis(1), |s| s.0);
                    let latency = base / 2 + device::uniform(&mut dev_rng, base);
                    let loss = l.loss * 2.0 * ((dev_rng.next_u32() as f64) / u32::MAX as f64);
                    LinkFaults {
                        latency: latency.max(Duration::from_millis(1)),
                        loss,
                        bandwidth: l.bandwidth,
                        ..LinkFaults::PERFECT
                    }
                });
                let node = FleetDevice::new(
                    os,
                    server_addr,
                    dev_rng,
                    ci,
                    c.behaviour,
                    bad.clone(),
                    tally.clone(),
                    boot_at,
                    c.app,
                );
                nodes.push((n, node, link));
                n += 1;
            }
        }
        let mut net = SimNetwork::new(seed);
        let cloud = net.add_node(server_addr, FleetCloud { cloud, events: 0 })?;
        for (n, node, link) in nodes {
            let id = net.add_node_ephemeral(device_ip(n), node)?;
            if let Some(faults) = link {
                net.set_link_faults(id, cloud, faults);
                net.set_link_faults(cloud, id, faults);
            }
        }
        Ok(Fleet {
            scenario: scenario.clone(),
            seed,
            net,
            cloud,
            tally,
        })
    }

    pub fn devices(&self) -> u64 {
        self.scenario.devices()
    }

    fn cloud_mut(&mut self) -> &mut FleetCloud {
        self.net
            .node_mut::<FleetCloud>(self.cloud)
            .expect("the cloud node is never removed")
    }

    fn cloud(&self) -> &Cloud {
        &self
            .net
            .node::<FleetCloud>(self.cloud)
            .expect("the cloud node is never removed")
            .cloud
    }

    /// Runs the whole scenario: releases and rollouts at their times, a sample of the counts
    /// every `sample`, the expectations at their times and at the end.
    pub fn run(mut self) -> Result<FleetRun, FleetRunError> {
        let s = self.scenario.clone();
        let seed = self.seed;
        let mut stops: BTreeSet<Duration> = BTreeSet::new();
        let mut t = Duration::ZERO;
        while t <= s.duration {
            stops.insert(t);
            t += s.sample;
        }
        stops.insert(s.duration);
        for r in &s.releases {
            stops.insert(r.at.0.min(s.duration));
        }
        for (at, _) in &s.rollouts {
            stops.insert((*at).min(s.duration));
        }
        for (at, _, _) in &s.rollout_controls {
            stops.insert((*at).min(s.duration));
        }
        for (_, e) in &s.expects {
            if let Expect::Share { by, .. } = e {
                stops.insert(*by);
            }
        }
        let mut curve = Curve::new(&s, seed);
        let mut checks: BTreeMap<usize, Check> = BTreeMap::new();
        for &t in &stops {
            self.net.run_until(t)?;
            for r in s.releases.iter().filter(|r| r.at.0 == t) {
                let release = Release {
                    product_default: r.default,
                    groups: r.groups.iter().cloned().collect(),
                    intelligent: r.intelligent,
                };
                let fc = self.cloud_mut();
                fc.cloud
                    .release_firmware(t, s.product, r.app, &release)
                    .map_err(|source| FleetRunError::Cloud {
                        seed,
                        what: format!("the release of app {}", r.app),
                        source,
                    })?;
                fc.drain();
            }
            for (_, plan) in s.rollouts.iter().filter(|(at, _)| *at == t) {
                let fc = self.cloud_mut();
                fc.cloud
                    .start_rollout(t, s.product, plan.clone())
                    .map_err(|source| FleetRunError::Cloud {
                        seed,
                        what: format!("the staged rollout of app {}", plan.version),
                        source,
                    })?;
                fc.drain();
            }
            for (_, control, reason) in s.rollout_controls.iter().filter(|(at, ..)| *at == t) {
                let fc = self.cloud_mut();
                let id = fc.cloud.rollout(s.product).map_or(0, |r| r.id);
                fc.cloud
                    .control_rollout(t, s.product, id, *control, reason)
                    .map_err(|source| FleetRunError::Cloud {
                        seed,
                        what: format!("the {} of the staged rollout", control.name()),
                        source,
                    })?;
                fc.drain();
            }
            if (t.as_millis() % s.sample.as_millis()) == 0 || t == s.duration {
                curve.push(t, &self.tally.borrow().cohorts);
            }
            let tally = self.tally.borrow();
            for (i, (what, e)) in s.expects.iter().enumerate() {
                if let Expect::Share {
                    app,
                    at_least,
                    at_most,
                    by,
                    cohort,
                } = e
                {
                    if *by != t {
                        continue;
                    }
                    let (on, total) = share(&s, &tally.cohorts, *app, *cohort);
                    let frac = on as f64 / total.max(1) as f64;
                    let passed = at_least.is_none_or(|x| frac >= x - 1e-12)
                        && at_most.is_none_or(|x| frac <= x + 1e-12);
                    checks.insert(
                        i,
                        Check {
                            what: what.clone(),
                            passed,
                            found: format!("{on} of {total} ({:.1} %)", frac * 100.0),
                        },
                    );
                }
            }
        }
        let tally = self.tally.borrow();
        let rollout = s.rollouts.last().and_then(|(_, plan)| {
            self.cloud().rollout(s.product).map(|r| RolloutSummary {
                version: r.plan.version,
                state: r.state.name().to_string(),
                stage: r.state.stage(plan.stages.len()),
                stages: plan.stages.len(),
                counts: r.counts(),
                log: r.log.clone(),
            })
        });
        for (i, (what, e)) in s.expects.iter().enumerate() {
            let check = match e {
                Expect::Share { .. } => continue,
                Expect::NoBricked => {
                    let n: u32 = tally.cohorts.iter().map(|c| c.bricked).sum();
                    Check {
                        what: what.clone(),
                        passed: n == 0,
                        found: format!("{n} unbootable"),
                    }
                }
                Expect::NoneUpdatedWhileBusy => Check {
                    what: what.clone(),
                    passed: tally.updated_while_busy == 0,
                    found: format!("{} transfers started while busy", tally.updated_while_busy),
                },
                Expect::NoTransferStartedAfter(t) => {
                    let late: Vec<Duration> = tally
                        .first_transfers
                        .iter()
                        .copied()
                        .filter(|s| s > t)
                        .collect();
                    Check {
                        what: what.clone(),
                        passed: late.is_empty(),
                        found: match late.iter().min() {
                            None => format!(
                                "{} first transfers, none after",
                                tally.first_transfers.len()
                            ),
                            Some(first) => format!(
                                "{} first transfers after, the first at {}",
                                late.len(),
                                crate::scenario::model::format_duration(*first)
                            ),
                        },
                    }
                }
                Expect::Rollout { state, stage } => match &rollout {
                    None => Check {
                        what: what.clone(),
                        passed: false,
                        found: "no staged rollout was started".into(),
                    },
                    Some(r) => Check {
                        what: what.clone(),
                        passed: &r.state == state && stage.is_none_or(|s| s == r.stage),
                        found: format!("{} at stage {}", r.state, r.stage),
                    },
                },
            };
            checks.insert(i, check);
        }
        let stats = RunStats {
            devices: s.devices(),
            handshakes: tally.handshakes,
            resumptions: tally.resumptions,
            datagrams: self.net.stats().sent,
            cloud_events: self
                .net
                .node::<FleetCloud>(self.cloud)
                .map_or(0, |c| c.events),
            updated_while_busy: tally.updated_while_busy,
            power_losses_during_update: tally.power_losses_during_update,
        };
        drop(tally);
        Ok(FleetRun {
            name: s.name.clone(),
            seed,
            curve,
            checks: checks.into_values().collect(),
            rollout,
            stats,
        })
    }
}

/// Devices of `cohort` (or all) running `app`, and how many devices that is out of.
fn share(
    s: &FleetScenario,
    counts: &[CohortCounts],
    app: u16,
    cohort: Option<usize>,
) -> (u64, u64) {
    let pick: Vec<usize> = match cohort {
        Some(c) => vec![c],
        None => (0..counts.len()).collect(),
    };
    let on = pick
        .iter()
        .map(|&c| counts[c].versions.get(&app).copied().unwrap_or(0) as u64)
        .sum();
    let total = pick.iter().map(|&c| s.cohorts[c].count as u64).sum();
    (on, total)
}

/// Builds and runs a fleet scenario (the seed overrides the file's).
pub fn run(scenario: &FleetScenario, seed: Option<u64>) -> Result<FleetRun, FleetRunError> {
    Fleet::build(scenario, seed)?.run()
}
