//! The [`Cloud`]'s product operations: every change to products, firmware, releases and
//! product devices goes through these methods, which apply it to the [`Fleet`] (where the
//! checks are) and then let the cloud act on it (an intelligent release or a lock with "flash
//! now" reaches online devices at once; a standard release waits for the next handshake). The
//! REST API and scenario steps call these; nothing else changes the fleet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::event::StreamEvent;
use super::fleet::{DeviceChange, Fleet, FleetError, ProductFirmware, ProductId, Release, Staged};
use super::rollout::{Control, ControlError, Rollout, RolloutAction, RolloutPlan, RolloutState};
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
    /// per product: a new one replaces one that is not running (paused, rolled back, aborted
    /// or completed); the replaced one is kept, read only, for [`Cloud::rollouts`], and the
    /// new one gets the next id (1, 2, ... per product).
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
            if matches!(r.state, RolloutState::Running { .. }) {
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
        let (mut rollout, action) = Rollout::start(now, product, plan, devices);
        if let Some(old) = self.rollouts.remove(&product) {
            rollout.id = old.id + 1;
            self.rollout_history.entry(product).or_default().push(old);
        }
        self.rollouts.insert(product, rollout);
        self.apply_rollout_action(now, product, action);
        Ok(())
    }

    /// A product's staged rollout (the last one started), with its state and counts.
    pub fn rollout(&self, product: ProductId) -> Option<&Rollout> {
        self.rollouts.get(&product)
    }

    /// Every staged rollout of a product this cloud keeps, oldest first (the last one is the
    /// current one).
    pub fn rollouts(&self, product: ProductId) -> impl Iterator<Item = &Rollout> {
        self.rollout_history
            .get(&product)
            .into_iter()
            .flatten()
            .chain(self.rollouts.get(&product))
    }

    /// Every staged rollout of every product, products in order, each oldest first.
    pub fn all_rollouts(&self) -> impl Iterator<Item = &Rollout> {
        let products: BTreeSet<ProductId> = self
            .rollouts
            .keys()
            .chain(self.rollout_history.keys())
            .copied()
            .collect();
        products.into_iter().flat_map(|p| self.rollouts(p))
    }

    /// A person pauses, resumes or aborts the product's rollout `id` (only the current one
    /// can change: an older one was replaced). An abort withdraws the admitted devices whose
    /// update had not started (`rollout` module documentation); a resume lets the next stage
    /// start at once if it is due.
    pub fn control_rollout(
        &mut self,
        now: Duration,
        product: ProductId,
        id: u32,
        control: Control,
        reason: &str,
    ) -> Result<(), FleetError> {
        let current = self.rollouts.get(&product).map(|r| r.id);
        if current != Some(id) {
            let old = self.rollouts(product).find(|r| r.id == id);
            return Err(match old {
                Some(old) => FleetError::RolloutControl {
                    product,
                    id,
                    source: ControlError {
                        action: control.name(),
                        state: old.state.name(),
                        hint: "it was replaced by a newer rollout of its product",
                    },
                },
                None => FleetError::NoRollout { product, id },
            });
        }
        let r = self
            .rollouts
            .get_mut(&product)
            .ok_or(FleetError::NoRollout { product, id })?;
        let action =
            r.control(now, control, reason)
                .map_err(|source| FleetError::RolloutControl {
                    product,
                    id,
                    source,
                })?;
        if let Some(action) = action {
            self.apply_rollout_action(now, product, action);
        }
        if control == Control::Resume {
            let next = self.rollouts.get_mut(&product).and_then(|r| r.service(now));
            if let Some(next) = next {
                self.apply_rollout_action(now, product, next);
            }
        }
        Ok(())
    }

    /// Puts back saved rollouts (`hil cloud --state`), after [`Cloud::restore_fleet`]: the
    /// newest of each product is its current one and its admitted devices take its version
    /// again (unless it rolled back or completed). Nothing is delivered by this, as for the
    /// fleet.
    pub fn restore_rollouts(&mut self, rollouts: Vec<Rollout>) {
        let mut by_product: BTreeMap<ProductId, Vec<Rollout>> = BTreeMap::new();
        for r in rollouts {
            by_product.entry(r.product).or_default().push(r);
        }
        for (product, mut list) in by_product {
            list.sort_by_key(|r| r.id);
            let Some(current) = list.pop() else {
                continue;
            };
            let staged =
                (current.holds() && current.state != RolloutState::Completed).then(|| Staged {
                    version: current.plan.version,
                    intelligent: current.plan.intelligent,
                    admitted: current.admitted().collect(),
                });
            self.fleet.set_staged(product, staged);
            self.rollouts.insert(product, current);
            self.rollout_history.insert(product, list);
        }
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
            RolloutAction::Cancel(devices) => {
                self.fleet.withdraw_staged(product, &devices);
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
