//! The [`Cloud`]'s product operations: every change to products, firmware, releases and
//! product devices goes through these methods, which apply it to the [`Fleet`] (where the
//! checks are) and then let the cloud act on it (an intelligent release or a lock with "flash
//! now" reaches online devices at once; a standard release waits for the next handshake). The
//! REST API and scenario steps call these; nothing else changes the fleet.

use std::collections::BTreeSet;
use std::time::Duration;

use super::event::StreamEvent;
use super::fleet::{DeviceChange, Fleet, FleetError, ProductFirmware, ProductId, Release, Staged};
use super::rollout::{Rollout, RolloutAction, RolloutPlan};
use super::{Cloud, DeviceId};

/// How a fleet change reaches the devices it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// At each device's next full handshake (standard release, lock without flash now).
    NextHandshake,
    /// At once to online devices, and to the others when they come back (intelligent release,
    /// lock with flash now, force-enable).
    Now,
}

impl Cloud {
    /// Unix time (seconds) at the cloud's time zero ([`super::CloudConfig::unix_time_at_epoch`]).
    pub fn unix_time_at_epoch(&self) -> u64 {
        self.config.unix_time_at_epoch
    }

    /// `now` as time since the Unix epoch, in whole milliseconds, the way the fleet keeps its
    /// times (they must mean the same after a restart, when the cloud's time starts again at
    /// zero; the API and the saved state show milliseconds).
    pub fn unix_time(&self, now: Duration) -> Duration {
        let ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        Duration::from_secs(self.config.unix_time_at_epoch)
            .saturating_add(Duration::from_millis(ms))
    }

    /// When the device's current (or last) session started and when the cloud last heard from
    /// it, as Unix time (`last_handshake_at`, `last_heard` of the API); `None` before its first
    /// session. (An accessor for the API, kept here with the other API-facing methods.)
    pub fn device_times(&self, device: DeviceId) -> Option<(Duration, Duration)> {
        let session = self.devices.get(&device)?.session.as_ref()?;
        Some((
            self.unix_time(session.started_at),
            self.unix_time(session.last_heard),
        ))
    }

    /// Puts back a saved fleet (`hil cloud --state`) in a cloud that has none yet, and the
    /// force-enable setting of its product devices. Nothing is delivered by this: product
    /// targets are armed at each device's next handshake, as after any restart of the cloud.
    pub fn restore_fleet(&mut self, now: Duration, fleet: Fleet) {
        self.fleet = fleet;
        let forced: Vec<DeviceId> = self
            .fleet
            .products()
            .flat_map(|p| p.devices.iter())
            .filter(|(_, d)| d.updates_forced)
            .map(|(id, _)| *id)
            .collect();
        for id in forced {
            self.set_updates_forced(now, id.0, true);
        }
    }

    /// Changes a firmware version's title and description.
    pub fn edit_firmware(
        &mut self,
        product: ProductId,
        version: u16,
        title: Option<&str>,
        description: Option<&str>,
    ) -> Result<&ProductFirmware, FleetError> {
        self.fleet
            .edit_firmware(product, version, title, description)
    }

    /// Creates groups in a product.
    pub fn add_product_groups(
        &mut self,
        product: ProductId,
        groups: &BTreeSet<String>,
    ) -> Result<(), FleetError> {
        self.fleet.add_groups(product, groups)
    }

    /// Deletes a group of a product (its devices leave it, its releases are withdrawn); the
    /// devices' new targets come at their next handshake, like any withdrawn release.
    pub fn delete_product_group(
        &mut self,
        now: Duration,
        product: ProductId,
        group: &str,
    ) -> Result<(), FleetError> {
        let devices = self.fleet.delete_group(product, group)?;
        self.fleet_changed(now, &devices, Delivery::NextHandshake);
        Ok(())
    }

    pub fn create_product(
        &mut self,
        id: ProductId,
        name: &str,
        platform_id: u16,
    ) -> Result<(), FleetError> {
        self.fleet.create_product(id, name, platform_id)
    }

    /// Adds a registered (or later registered) device to a product.
    pub fn add_product_device(
        &mut self,
        now: Duration,
        product: ProductId,
        device: DeviceId,
    ) -> Result<(), FleetError> {
        self.fleet.add_device(product, device)?;
        self.fleet_changed(now, &[device], Delivery::NextHandshake);
        Ok(())
    }

    pub fn remove_product_device(
        &mut self,
        now: Duration,
        product: ProductId,
        device: DeviceId,
    ) -> Result<(), FleetError> {
        self.fleet.remove_device(product, device)?;
        self.fleet_changed(now, &[device], Delivery::NextHandshake);
        Ok(())
    }

    /// Uploads a product firmware version (delivers nothing by itself, reference 4.1).
    pub fn upload_firmware(
        &mut self,
        now: Duration,
        product: ProductId,
        version: u16,
        title: &str,
        description: &str,
        file: Vec<u8>,
    ) -> Result<&ProductFirmware, FleetError> {
        let at = self.unix_time(now);
        self.fleet
            .upload(product, version, title, description, file, at)
    }

    pub fn delete_firmware(&mut self, product: ProductId, version: u16) -> Result<(), FleetError> {
        self.fleet.delete_firmware(product, version)
    }

    /// Releases a version; intelligent releases reach online devices at once.
    pub fn release_firmware(
        &mut self,
        now: Duration,
        product: ProductId,
        version: u16,
        release: &Release,
    ) -> Result<(), FleetError> {
        let at = self.unix_time(now);
        let devices = self.fleet.release(product, version, release, at)?;
        if release.intelligent {
            // At once only to the devices this release targets: another device of the
            // product whose target is a standard release keeps waiting for its next
            // handshake (an intelligent release to one group must not push another group's
            // standard release).
            let (targeted, others): (Vec<DeviceId>, Vec<DeviceId>) =
                devices.into_iter().partition(|d| {
                    self.fleet.target(*d).firmware().map(|t| t.version) == Some(version)
                });
            self.fleet_changed(now, &targeted, Delivery::Now);
            self.fleet_changed(now, &others, Delivery::NextHandshake);
        } else {
            self.fleet_changed(now, &devices, Delivery::NextHandshake);
        }
        Ok(())
    }

    /// Withdraws a release from the product default and/or groups.
    pub fn unrelease_firmware(
        &mut self,
        now: Duration,
        product: ProductId,
        version: u16,
        product_default: bool,
        groups: &BTreeSet<String>,
    ) -> Result<(), FleetError> {
        let devices = self
            .fleet
            .unrelease(product, version, product_default, groups)?;
        self.fleet_changed(now, &devices, Delivery::NextHandshake);
        Ok(())
    }

    /// Changes a product device (lock / unlock, development, groups, force-enable updates).
    /// `flash_now` (console "Flash now", API `flash=true`) delivers a lock at once to an
    /// online device; unmarking a development device also acts at once (UNCONFIRMED: the docs
    /// say it "may trigger an immediate OTA").
    pub fn change_product_device(
        &mut self,
        now: Duration,
        product: ProductId,
        device: DeviceId,
        change: &DeviceChange,
        flash_now: bool,
    ) -> Result<(), FleetError> {
        self.fleet.change_device(product, device, change)?;
        if let Some(forced) = change.updates_forced {
            self.set_updates_forced(now, device.0, forced);
        }
        let now_delivery = flash_now || change.development == Some(false);
        let delivery = if now_delivery {
            Delivery::Now
        } else {
            Delivery::NextHandshake
        };
        self.fleet_changed(now, &[device], delivery);
        Ok(())
    }

    // ---- staged rollouts (`rollout`) ----

    /// Starts a staged rollout of an uploaded version to a product's devices (not its
    /// development devices): stage 1 is admitted at once, later stages by
    /// [`Cloud::handle_timeout`] as the plan says. Admitted devices take the version where
    /// the product default would apply (a lock or a group release still wins). One rollout
    /// per product: a new one replaces one that ended (paused, rolled back or completed).
    pub fn start_rollout(
        &mut self,
        now: Duration,
        product: ProductId,
        plan: RolloutPlan,
    ) -> Result<(), FleetError> {
        plan.validate().map_err(FleetError::Rollout)?;
        let p = self
            .fleet
            .product(product)
            .ok_or(FleetError::NoProduct(product))?;
        if !p.firmware.contains_key(&plan.version) {
            return Err(FleetError::NoFirmware {
                product,
                version: plan.version,
            });
        }
        if let Some(r) = self.rollouts.get(&product) {
            if matches!(r.state, super::rollout::RolloutState::Running { .. }) {
                return Err(FleetError::Rollout(format!(
                    "product {product} already has a staged rollout of version {} running",
                    r.plan.version
                )));
            }
        }
        let devices: Vec<DeviceId> = p
            .devices
            .iter()
            .filter(|(_, d)| !d.development)
            .map(|(id, _)| *id)
            .collect();
        self.fleet.set_staged(
            product,
            Some(Staged {
                version: plan.version,
                intelligent: plan.intelligent,
                admitted: BTreeSet::new(),
            }),
        );
        let (rollout, action) = Rollout::start(now, product, plan, devices);
        self.rollouts.insert(product, rollout);
        self.apply_rollout_action(now, product, action);
        Ok(())
    }

    /// A product's staged rollout (the last one started), with its state and counts.
    pub fn rollout(&self, product: ProductId) -> Option<&Rollout> {
        self.rollouts.get(&product)
    }

    /// Every stream event goes through here before it is queued.
    pub(super) fn observe_rollouts(&mut self, event: &StreamEvent) {
        if self.rollouts.is_empty() {
            return;
        }
        if let Some(product) = self.fleet.product_of(event.device_id) {
            if let Some(r) = self.rollouts.get_mut(&product) {
                r.observe(event);
            }
        }
    }

    /// Timeouts, abort criteria and stage changes of every rollout that is due.
    pub(super) fn service_rollouts(&mut self, now: Duration) {
        let due: Vec<ProductId> = self
            .rollouts
            .iter()
            .filter(|(_, r)| r.deadline().is_some_and(|d| d <= now))
            .map(|(p, _)| *p)
            .collect();
        for product in due {
            let action = self.rollouts.get_mut(&product).and_then(|r| r.service(now));
            if let Some(action) = action {
                self.apply_rollout_action(now, product, action);
            }
        }
    }

    fn apply_rollout_action(&mut self, now: Duration, product: ProductId, action: RolloutAction) {
        let Some(r) = self.rollouts.get(&product) else {
            return;
        };
        let delivery = if r.plan.intelligent {
            Delivery::Now
        } else {
            Delivery::NextHandshake
        };
        let version = r.plan.version;
        match action {
            RolloutAction::Admit(devices) => {
                self.fleet.admit_staged(product, &devices);
                self.fleet_changed(now, &devices, delivery);
            }
            RolloutAction::Withdraw(devices) => {
                self.fleet.set_staged(product, None);
                self.fleet_changed(now, &devices, delivery);
            }
            RolloutAction::Complete => {
                // The version becomes the product default; the staged set is no longer
                // needed (every device it admitted now gets the version as the default).
                let release = Release {
                    product_default: true,
                    groups: self
                        .fleet
                        .product(product)
                        .and_then(|p| p.firmware.get(&version))
                        .map(|f| f.groups.clone())
                        .unwrap_or_default(),
                    intelligent: r.plan.intelligent,
                };
                self.fleet.set_staged(product, None);
                let at = self.unix_time(now);
                if let Ok(devices) = self.fleet.release(product, version, &release, at) {
                    self.fleet_changed(now, &devices, delivery);
                }
            }
        }
    }
}
