//! Asset bundles delivered as desired state (reference 6.3): a flash or product firmware that
//! is a bundle (`protocol::bundle`) targets the application *and* its assets. The cloud sends
//! the application as one transfer, then every asset the device's describe does not list (same
//! name and SHA-256), each as its own transfer with `Module-Function` 9, each followed by the
//! device's reboot. The target is reached only when the device's own describe shows the
//! application running and lists every asset.
//!
//! Choices (UNCONFIRMED: the reference documents the device, not the cloud's order):
//! * **Application first**, then the assets in bundle order. Device OS's `storeAsset` deletes
//!   every asset the *running* application does not require, so assets sent before their
//!   application would delete each other; after the application, a device missing assets is in
//!   safe mode and takes them one per reboot.
//! * An asset travels compressed (Particle's default) unless compressing does not make it
//!   smaller (incompressible data travels as a plain asset module; Device OS takes both).
//! * A bundle whose assets exceed the platform's documented limits ([`limits`]) is refused
//!   before anything is sent (at upload for a product, at the flash or before UpdateStart for
//!   one device): sending its application first would leave the device in safe mode waiting for
//!   an asset it can only refuse.
//! * An asset the device refuses for good (-190 too large, a module error) ends the target:
//!   the flash or product job fails with that code and message; it is never sent again.

use std::sync::Arc;
use std::time::Duration;

use protocol::bundle::{is_zip, Asset, Bundle};
use protocol::message::SystemDescribe;
use sha2::{Digest, Sha256};

use super::job::{Job, JobKind, JobStatus};
use super::policy::Gate;
use super::{Cloud, DeviceId, JobId};

/// One asset of a target, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAsset {
    pub name: String,
    /// SHA-256 of the raw asset (what the describe lists).
    pub hash: Vec<u8>,
    /// The asset module one transfer carries.
    pub module: Arc<Vec<u8>>,
}

/// What a file sent to a device amounts to: the file to transfer first and the assets that
/// must follow.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub file: Arc<Vec<u8>>,
    pub assets: Vec<TargetAsset>,
}

/// The asset module the cloud sends for `asset` (compressed unless that does not shrink it).
pub fn module_for(asset: &Asset) -> Result<Vec<u8>, String> {
    let plain = asset.module(false).map_err(|e| e.to_string())?;
    let compressed = asset.module(true).map_err(|e| e.to_string())?;
    Ok(if compressed.len() < plain.len() {
        compressed
    } else {
        plain
    })
}

/// A bundle is checked (its application, every dependency against its asset) and split; any
/// other file is sent as it is. `Err` names what is wrong with a bundle.
pub fn unpack(file: Arc<Vec<u8>>) -> Result<Unpacked, String> {
    if !is_zip(&file) {
        return Ok(Unpacked {
            file,
            assets: Vec::new(),
        });
    }
    let bundle = Bundle::read(&file).map_err(|e| format!("the asset bundle is refused: {e}"))?;
    let mut assets = Vec::new();
    for a in &bundle.assets {
        assets.push(TargetAsset {
            name: a.name.clone(),
            hash: a.sha256().to_vec(),
            module: Arc::new(module_for(a)?),
        });
    }
    Ok(Unpacked {
        file: Arc::new(bundle.app),
        assets,
    })
}

/// Why a bundle cannot be sent to a device of `platform_id` (its Hello's; `None` when the
/// cloud has not heard one yet), if it cannot. `None` for files that are not bundles.
pub fn refusal(file: &[u8], platform_id: Option<u16>) -> Option<String> {
    if !is_zip(file) {
        return None;
    }
    let unpacked = match unpack(Arc::new(file.to_vec())) {
        Ok(u) => u,
        Err(e) => return Some(e),
    };
    platform_id.and_then(|p| limit_refusal(&unpacked.assets, p))
}

/// Particle's documented asset limits of a platform, in bytes of asset modules as they travel
/// (compressed): one asset, and all of a bundle's assets together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssetLimits {
    pub single: u64,
    pub total: u64,
}

/// The documented limits (reference 6.3: "tracker/b5som/esomx 2 MB total, 1.5 MB single;
/// boron/bsom/argon 1.125 MB total, 592 KB single; p2 1.125 MB total, 1.09 MB single"), read
/// as the numbers Device OS itself checks at UpdateStart: 592 KB is
/// `EXTERNAL_FLASH_OTA_SAFE_LENGTH` (606,208 bytes); 1.09 MB is a 1,152 KiB asset file system
/// less its 16 reserved 4 KiB blocks (1,088 KiB); 1.5 MB is the tracker's 1,500 KiB OTA area.
/// UNCONFIRMED: the M-SoM is not in the documented list; it has the P2's asset file system
/// and takes the P2's limits. Platforms without asset OTA, or not documented, have none (the
/// device's own -190 check is then the only one).
pub fn limits(platform_id: u16) -> Option<AssetLimits> {
    const KIB: u64 = 1024;
    match platform_id {
        // argon, boron, bsom
        12 | 13 | 23 => Some(AssetLimits {
            single: 592 * KIB,
            total: 1152 * KIB,
        }),
        // esomx, b5som, tracker
        15 | 25 | 26 => Some(AssetLimits {
            single: 1500 * KIB,
            total: 2048 * KIB,
        }),
        // p2, msom
        32 | 35 => Some(AssetLimits {
            single: 1088 * KIB,
            total: 1152 * KIB,
        }),
        _ => None,
    }
}

/// Why `assets` cannot go to a device of `platform_id`, if they cannot. Checked before
/// anything of the bundle is sent: the application goes first (see the module comment), so a
/// bundle the device would refuse half-way would leave it in safe mode, its new application
/// waiting for an asset that never comes. UNCONFIRMED: that Particle's cloud checks this
/// rather than leaving it to the device; a cloud that knows the limits has no reason not to.
pub fn limit_refusal(assets: &[TargetAsset], platform_id: u16) -> Option<String> {
    let limits = limits(platform_id)?;
    let platform = protocol::module::platform_name(platform_id).unwrap_or("this platform");
    if let Some(a) = assets
        .iter()
        .find(|a| a.module.len() as u64 > limits.single)
    {
        return Some(format!(
            "the asset bundle is refused before anything is sent: asset {:?} is {} bytes as it \
             travels, more than the {} bytes one asset may take on a {platform} (Device OS would \
             refuse it at UpdateStart with -190)",
            a.name,
            a.module.len(),
            limits.single
        ));
    }
    let total: u64 = assets.iter().map(|a| a.module.len() as u64).sum();
    (total > limits.total).then(|| {
        format!(
            "the asset bundle is refused before anything is sent: its {} assets take {total} \
             bytes as they travel, more than the {} bytes of assets a {platform} holds",
            assets.len(),
            limits.total
        )
    })
}

/// Whether the describe lists `asset` (same name and SHA-256).
pub fn listed(asset: &TargetAsset, describe: &SystemDescribe) -> bool {
    describe
        .assets
        .iter()
        .any(|a| a.name == asset.name && a.hash == asset.hash)
}

/// The first asset of `assets` the describe does not list.
pub fn first_missing<'a>(
    assets: &'a [TargetAsset],
    describe: &SystemDescribe,
) -> Option<&'a TargetAsset> {
    assets.iter().find(|a| !listed(a, describe))
}

/// How a job whose modules the device runs stands with its assets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetVerdict {
    /// Every asset is listed (or the job has none).
    Complete,
    /// The application runs its modules; assets are still to come (sent by reconcile).
    Awaiting(String),
    /// An asset job whose asset the device does not list after its reboot.
    Missing(String),
}

/// The verdict for a committed (or finished) job from the device's describe.
pub fn verdict(kind: &JobKind, assets: &[TargetAsset], describe: &SystemDescribe) -> AssetVerdict {
    match first_missing(assets, describe) {
        None => AssetVerdict::Complete,
        Some(a) if matches!(kind, JobKind::Asset { .. }) => AssetVerdict::Missing(format!(
            "the device's describe does not list asset {:?}",
            a.name
        )),
        Some(a) => AssetVerdict::Awaiting(format!(
            "the application is installed; asset {:?} is still to be delivered",
            a.name
        )),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Cloud {
    /// Reconcile's asset step: the device runs the target's modules (`target_assets` are the
    /// target's assets). Sends the first missing asset as its own job, holds, or ends the
    /// target when that asset was refused for good. `Some(again)` when it decided (`again`:
    /// look once more), `None` when every asset is listed (the caller goes on).
    pub(super) fn reconcile_assets(
        &mut self,
        now: Duration,
        id: DeviceId,
        target: Option<JobId>,
        target_assets: &[TargetAsset],
        describe: &SystemDescribe,
        gate: Gate,
    ) -> Option<bool> {
        let missing = first_missing(target_assets, describe)?.clone();
        let d = self.devices.get(&id)?;
        // An asset job committed and waiting for the device's reboot: the describe is older.
        let waiting = d.committed.iter().any(|j| {
            self.jobs
                .get(j)
                .is_some_and(|job| matches!(job.kind, JobKind::Asset { .. }))
        });
        if waiting {
            return Some(false);
        }
        let refused = d
            .gave_up_on(&sha256(&missing.module))
            .map(|g| (g.code, g.message.clone()));
        if let Some((code, message)) = refused {
            let target = match target {
                Some(job) => Some(job),
                None => self.create_product_job(now, id),
            };
            if let Some(job) = target {
                if let Some(d) = self.devices.get_mut(&id) {
                    d.committed.retain(|j| *j != job);
                    d.queue.retain(|j| *j != job);
                }
                self.fail_job(
                    now,
                    job,
                    code,
                    format!("asset {:?} could not be delivered: {message}", missing.name),
                    false,
                );
                return Some(true);
            }
            return Some(false);
        }
        if gate == Gate::Held {
            if let Some(job) = target {
                if self
                    .jobs
                    .get(&job)
                    .is_some_and(|j| j.status == JobStatus::Queued)
                {
                    self.hold_job(now, job, None);
                }
            }
            return Some(false);
        }
        let job_id = JobId(self.next_job);
        self.next_job += 1;
        let kind = JobKind::Asset {
            name: missing.name.clone(),
        };
        let what = kind.to_string();
        let mut job = Job::new(kind, id, missing.module.clone());
        job.assets = vec![missing];
        self.jobs.insert(job_id, job);
        self.ota_event(now, job_id, id, super::OtaEventKind::Created { what });
        if let Some(d) = self.devices.get_mut(&id) {
            d.queue.push_front(job_id);
        }
        self.start_job(now, id, job_id);
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(name: &str, len: usize) -> TargetAsset {
        TargetAsset {
            name: name.into(),
            hash: vec![0; 32],
            module: Arc::new(vec![0; len]),
        }
    }

    #[test]
    fn limits_follow_the_documented_table() {
        assert_eq!(limits(13).unwrap().single, 606_208); // boron: EXTERNAL_FLASH_OTA_SAFE_LENGTH
        assert_eq!(limits(12), limits(23)); // argon, bsom
        assert_eq!(limits(26).unwrap().total, 2 * 1024 * 1024); // tracker
        assert_eq!(limits(32).unwrap().single, 1088 * 1024); // p2
        assert_eq!(limits(6), None); // photon: no asset OTA
    }

    #[test]
    fn one_asset_over_the_single_limit_is_named() {
        let at = 606_208;
        assert_eq!(limit_refusal(&[asset("a", at)], 13), None);
        let why = limit_refusal(&[asset("ok", 10), asset("big.bin", at + 1)], 13).unwrap();
        assert!(
            why.contains("\"big.bin\"") && why.contains("606209"),
            "{why}"
        );
        assert!(why.contains("boron") && why.contains("-190"), "{why}");
        // The same asset fits a tracker's 1,500 KiB.
        assert_eq!(limit_refusal(&[asset("big.bin", at + 1)], 26), None);
    }

    #[test]
    fn assets_over_the_total_limit_are_refused_together() {
        let each = 500 * 1024;
        let three = [asset("a", each), asset("b", each), asset("c", each)];
        let why = limit_refusal(&three, 13).unwrap();
        assert!(why.contains("3 assets") && why.contains("1179648"), "{why}");
        assert_eq!(limit_refusal(&three[..2], 13), None);
    }

    #[test]
    fn refusal_needs_a_platform_for_the_limits_but_not_for_a_broken_bundle() {
        assert_eq!(refusal(b"not a zip", Some(13)), None);
        let broken = b"PK\x03\x04 truncated".to_vec();
        assert!(refusal(&broken, None).is_some());
    }
}
