//! Products, their firmware and devices, and which product firmware a device should run
//! (reference `particle-cloud-api.md` sections 2.2-2.5 and 4.1-4.6, `particle-protocol.md`
//! section 7). Pure data and rules: no I/O, no clock (times are passed in). The [`super::Cloud`]
//! owns one [`Fleet`] and acts on [`Fleet::target`]; the REST API and scenario steps change it
//! only through the methods here, so the checks live in one place.
//!
//! Precedence ([`Fleet::target`], exactly as documented in 4.2):
//! 1. a development device gets no automatic product firmware;
//! 2. a device locked to a version (`desired_firmware_version`) gets that version;
//! 3. otherwise the highest version released to any of its groups;
//! 4. otherwise the product default release;
//! 5. otherwise nothing.
//!
//! When the target is delivered (standard: at the next full handshake; intelligent, lock with
//! flash now: at once) is the cloud's business ([`super::policy`]), not this module's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use protocol::module::{split_combined, Dependency, Module, ModuleFunction};
use sha2::{Digest, Sha256};

use super::DeviceId;

/// A product id (Particle's are integers).
pub type ProductId = u32;

/// Why a fleet operation was refused. Each message names what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("product {0} does not exist")]
    NoProduct(ProductId),
    #[error("product {0} already exists")]
    ProductExists(ProductId),
    #[error("device {device} is not in product {product}")]
    NotInProduct {
        product: ProductId,
        device: DeviceId,
    },
    #[error("device {device} is already in product {other}")]
    InOtherProduct { device: DeviceId, other: ProductId },
    #[error("product {product} has no firmware version {version}")]
    NoFirmware { product: ProductId, version: u16 },
    #[error("product {product} already has firmware version {version}")]
    DuplicateVersion { product: ProductId, version: u16 },
    #[error("the binary is not a module file: {0}")]
    NotAModule(String),
    #[error("the binary has no user part (it holds {0})")]
    NoUserPart(String),
    #[error("version {given} was given but the binary's PRODUCT_VERSION is {in_binary}")]
    VersionMismatch { given: u16, in_binary: u16 },
    #[error("the binary has no product version (PRODUCT_VERSION) in its suffix")]
    NoProductVersion,
    #[error("the binary is for platform {binary} but product {product} is platform {platform}")]
    WrongPlatform {
        product: ProductId,
        platform: u16,
        binary: u16,
    },
    #[error("firmware version {version} of product {product} was released and cannot be deleted")]
    Released { product: ProductId, version: u16 },
    #[error(
        "firmware version {version} of product {product} cannot be deleted: device {device} is \
         locked to it"
    )]
    LockedTo {
        product: ProductId,
        version: u16,
        device: DeviceId,
    },
    #[error("group `{0}` is not a valid group name (lowercase letters, digits, `-` and `_`)")]
    BadGroup(String),
    #[error("product {product} has no group `{group}`")]
    NoGroup { product: ProductId, group: String },
    /// A bundle whose assets exceed the product platform's documented limits.
    #[error("{0}")]
    AssetsTooLarge(String),
    /// A staged rollout that cannot start (a bad plan, one already running).
    #[error("staged rollout: {0}")]
    Rollout(String),
    #[error("product {product} has no staged rollout {id}")]
    NoRollout { product: ProductId, id: u32 },
    /// A person's pause / resume / abort the rollout's state does not allow.
    #[error("staged rollout {id} of product {product}: {source}")]
    RolloutControl {
        product: ProductId,
        id: u32,
        source: super::rollout::ControlError,
    },
}

/// One uploaded product firmware version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductFirmware {
    pub version: u16,
    pub title: String,
    pub description: String,
    pub file: Arc<Vec<u8>>,
    pub sha256: [u8; 32],
    pub platform_id: u16,
    /// What the user part needs from Device OS (its non-empty prefix dependencies).
    pub needs: Vec<Dependency>,
    /// Times are what the caller passes in; the [`super::Cloud`] passes time since the Unix
    /// epoch as its `unix_time_at_epoch` says, so they survive a restart (`--state`).
    pub uploaded_at: Duration,
    /// Released as the product default.
    pub product_default: bool,
    /// Released to these groups.
    pub groups: BTreeSet<String>,
    /// The latest release of this version was intelligent.
    pub intelligent: bool,
    /// Ever released (then it cannot be deleted).
    pub released_at: Option<Duration>,
}

/// A product's settings for one of its devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductDevice {
    pub development: bool,
    /// Locked to this version (`desired_firmware_version`).
    pub locked: Option<u16>,
    pub groups: BTreeSet<String>,
    /// Force-enable updates (`firmware_updates_forced`).
    pub updates_forced: bool,
}

/// A product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub platform_id: u16,
    pub firmware: BTreeMap<u16, ProductFirmware>,
    pub devices: BTreeMap<DeviceId, ProductDevice>,
    /// Groups known to the product (created on first use).
    pub groups: BTreeSet<String>,
    /// A staged rollout's version and the devices it admitted so far (`cloud::rollout`):
    /// they take it where the product default would apply.
    pub staged: Option<Staged>,
}

/// The fleet's side of a staged rollout (`cloud::rollout`): a version given to some devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub version: u16,
    pub intelligent: bool,
    pub admitted: BTreeSet<DeviceId>,
}

/// Which precedence rule gave a device its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Locked,
    /// The highest version released to one of its groups (this one).
    Group(String),
    /// Admitted to a staged rollout (in place of the product default).
    StagedRollout,
    ProductDefault,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Locked => f.write_str("locked"),
            Rule::Group(g) => write!(f, "released to group {g}"),
            Rule::StagedRollout => f.write_str("staged rollout"),
            Rule::ProductDefault => f.write_str("product default"),
        }
    }
}

/// The product firmware a device should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFirmware {
    pub product: ProductId,
    pub version: u16,
    pub rule: Rule,
    /// Delivered at once (intelligent release), not only at the next handshake.
    pub intelligent: bool,
    pub file: Arc<Vec<u8>>,
    /// SHA-256 of `file` (computed at upload).
    pub sha256: [u8; 32],
}

/// What [`Fleet::target`] says about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetTarget {
    /// Not a product device: only single-device flashes reach it.
    NotInProduct,
    /// A development device: no automatic product firmware.
    Development,
    /// In a product with nothing released that applies and not locked.
    Untargeted,
    Firmware(TargetFirmware),
}

impl FleetTarget {
    pub fn firmware(&self) -> Option<&TargetFirmware> {
        match self {
            FleetTarget::Firmware(t) => Some(t),
            _ => None,
        }
    }
}

/// A change to one product device's settings (`PUT /v1/products/:p/devices/:id`); `None`
/// leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChange {
    pub development: Option<bool>,
    /// `Some(None)` unlocks.
    pub locked: Option<Option<u16>>,
    pub groups: Option<BTreeSet<String>>,
    pub updates_forced: Option<bool>,
}

/// A release (`PUT /v1/products/:p/firmware/:version` with `product_default` and/or
/// `groups`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    pub product_default: bool,
    pub groups: BTreeSet<String>,
    pub intelligent: bool,
}

/// All products.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet {
    products: BTreeMap<ProductId, Product>,
    /// Which product each product device is in.
    membership: BTreeMap<DeviceId, ProductId>,
}

/// Checks a group name: Particle allows lowercase letters, digits, `-` and `_` (UNCONFIRMED:
/// the console lowercases names; we refuse what it would change).
pub fn valid_group(name: &str) -> Result<(), FleetError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(FleetError::BadGroup(name.to_string()))
    }
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet::default()
    }

    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.values()
    }

    pub fn product(&self, id: ProductId) -> Option<&Product> {
        self.products.get(&id)
    }

    /// The product a device is in.
    pub fn product_of(&self, device: DeviceId) -> Option<ProductId> {
        self.membership.get(&device).copied()
    }

    pub fn device(&self, device: DeviceId) -> Option<&ProductDevice> {
        let product = self.membership.get(&device)?;
        self.products.get(product)?.devices.get(&device)
    }

    pub fn create_product(
        &mut self,
        id: ProductId,
        name: &str,
        platform_id: u16,
    ) -> Result<(), FleetError> {
        if self.products.contains_key(&id) {
            return Err(FleetError::ProductExists(id));
        }
        self.products.insert(
            id,
            Product {
                id,
                name: name.to_string(),
                platform_id,
                firmware: BTreeMap::new(),
                devices: BTreeMap::new(),
                groups: BTreeSet::new(),
                staged: None,
            },
        );
        Ok(())
    }

    fn product_mut(&mut self, id: ProductId) -> Result<&mut Product, FleetError> {
        self.products.get_mut(&id).ok_or(FleetError::NoProduct(id))
    }

    /// Adds a device to a product (Device OS >= 4.0 devices are added by id, reference 7).
    pub fn add_device(&mut self, product: ProductId, device: DeviceId) -> Result<(), FleetError> {
        if let Some(other) = self.membership.get(&device).copied() {
            if other != product {
                return Err(FleetError::InOtherProduct { device, other });
            }
            return Ok(());
        }
        self.product_mut(product)?
            .devices
            .insert(device, ProductDevice::default());
        self.membership.insert(device, product);
        Ok(())
    }

    /// Removes a device from its product.
    pub fn remove_device(
        &mut self,
        product: ProductId,
        device: DeviceId,
    ) -> Result<(), FleetError> {
        let p = self.product_mut(product)?;
        if p.devices.remove(&device).is_none() {
            return Err(FleetError::NotInProduct { product, device });
        }
        self.membership.remove(&device);
        Ok(())
    }

    /// Uploads a firmware version: the binary must hold a user part for the product's platform
    /// whose PRODUCT_VERSION equals `version`; the Device OS it needs is recorded.
    pub fn upload(
        &mut self,
        product: ProductId,
        version: u16,
        title: &str,
        description: &str,
        file: Vec<u8>,
        now: Duration,
    ) -> Result<&ProductFirmware, FleetError> {
        let platform = self.product_mut(product)?.platform_id;
        let user = user_part_of(&file)?;
        if user.prefix.platform_id != platform {
            return Err(FleetError::WrongPlatform {
                product,
                platform,
                binary: user.prefix.platform_id,
            });
        }
        if protocol::bundle::is_zip(&file) {
            let unpacked =
                super::assets::unpack(Arc::new(file.clone())).map_err(FleetError::NotAModule)?;
            if let Some(why) = super::assets::limit_refusal(&unpacked.assets, platform) {
                return Err(FleetError::AssetsTooLarge(why));
            }
        }
        let in_binary = user.product_version().ok_or(FleetError::NoProductVersion)?;
        if in_binary != version {
            return Err(FleetError::VersionMismatch {
                given: version,
                in_binary,
            });
        }
        let needs = user
            .prefix
            .dependencies
            .iter()
            .filter(|d| !d.is_empty())
            .copied()
            .collect();
        let p = self.product_mut(product)?;
        if p.firmware.contains_key(&version) {
            return Err(FleetError::DuplicateVersion { product, version });
        }
        let sha256 = Sha256::digest(&file).into();
        let firmware = ProductFirmware {
            version,
            title: title.to_string(),
            description: description.to_string(),
            file: Arc::new(file),
            sha256,
            platform_id: platform,
            needs,
            uploaded_at: now,
            product_default: false,
            groups: BTreeSet::new(),
            intelligent: false,
            released_at: None,
        };
        Ok(p.firmware.entry(version).or_insert(firmware))
    }

    /// Deletes a firmware version that was never released.
    pub fn delete_firmware(&mut self, product: ProductId, version: u16) -> Result<(), FleetError> {
        let p = self.product_mut(product)?;
        let f = p
            .firmware
            .get(&version)
            .ok_or(FleetError::NoFirmware { product, version })?;
        if f.released_at.is_some() {
            return Err(FleetError::Released { product, version });
        }
        if let Some((device, _)) = p.devices.iter().find(|(_, d)| d.locked == Some(version)) {
            return Err(FleetError::LockedTo {
                product,
                version,
                device: *device,
            });
        }
        p.firmware.remove(&version);
        Ok(())
    }

    /// Releases a version to the product default and/or groups. A product default release
    /// moves the default from whichever version had it; a group release moves that group from
    /// whichever version it was released to. Returns the devices whose target may have changed.
    pub fn release(
        &mut self,
        product: ProductId,
        version: u16,
        release: &Release,
        now: Duration,
    ) -> Result<Vec<DeviceId>, FleetError> {
        for g in &release.groups {
            valid_group(g)?;
        }
        let p = self.product_mut(product)?;
        if !p.firmware.contains_key(&version) {
            return Err(FleetError::NoFirmware { product, version });
        }
        for (v, f) in p.firmware.iter_mut() {
            if *v == version {
                continue;
            }
            if release.product_default {
                f.product_default = false;
            }
            for g in &release.groups {
                f.groups.remove(g);
            }
        }
        p.groups.extend(release.groups.iter().cloned());
        if let Some(f) = p.firmware.get_mut(&version) {
            f.product_default |= release.product_default;
            f.groups.extend(release.groups.iter().cloned());
            f.intelligent = release.intelligent;
            f.released_at = Some(now);
        }
        Ok(p.devices.keys().copied().collect())
    }

    /// Withdraws a version's release: from the product default and/or these groups.
    pub fn unrelease(
        &mut self,
        product: ProductId,
        version: u16,
        product_default: bool,
        groups: &BTreeSet<String>,
    ) -> Result<Vec<DeviceId>, FleetError> {
        let p = self.product_mut(product)?;
        let f = p
            .firmware
            .get_mut(&version)
            .ok_or(FleetError::NoFirmware { product, version })?;
        if product_default {
            f.product_default = false;
        }
        for g in groups {
            f.groups.remove(g);
        }
        Ok(p.devices.keys().copied().collect())
    }

    /// Changes a product device's settings.
    pub fn change_device(
        &mut self,
        product: ProductId,
        device: DeviceId,
        change: &DeviceChange,
    ) -> Result<(), FleetError> {
        if let Some(groups) = &change.groups {
            for g in groups {
                valid_group(g)?;
            }
        }
        let p = self.product_mut(product)?;
        if let Some(Some(version)) = change.locked {
            if !p.firmware.contains_key(&version) {
                return Err(FleetError::NoFirmware { product, version });
            }
        }
        // Every check before the first change: a refused change changes nothing.
        if !p.devices.contains_key(&device) {
            return Err(FleetError::NotInProduct { product, device });
        }
        if let Some(groups) = &change.groups {
            p.groups.extend(groups.iter().cloned());
        }
        let d = p
            .devices
            .get_mut(&device)
            .ok_or(FleetError::NotInProduct { product, device })?;
        if let Some(development) = change.development {
            d.development = development;
        }
        if let Some(locked) = change.locked {
            d.locked = locked;
        }
        if let Some(groups) = &change.groups {
            d.groups = groups.clone();
        }
        if let Some(forced) = change.updates_forced {
            d.updates_forced = forced;
        }
        Ok(())
    }

    /// Changes a firmware version's title and description (`PUT /v1/products/:p/firmware/:v`).
    pub fn edit_firmware(
        &mut self,
        product: ProductId,
        version: u16,
        title: Option<&str>,
        description: Option<&str>,
    ) -> Result<&ProductFirmware, FleetError> {
        let f = self
            .product_mut(product)?
            .firmware
            .get_mut(&version)
            .ok_or(FleetError::NoFirmware { product, version })?;
        if let Some(t) = title {
            f.title = t.to_string();
        }
        if let Some(d) = description {
            f.description = d.to_string();
        }
        Ok(f)
    }

    /// Creates groups in a product (the API creates them on first use too).
    pub fn add_groups(
        &mut self,
        product: ProductId,
        groups: &BTreeSet<String>,
    ) -> Result<(), FleetError> {
        for g in groups {
            valid_group(g)?;
        }
        self.product_mut(product)?
            .groups
            .extend(groups.iter().cloned());
        Ok(())
    }

    /// Deletes a group: no device is in it and no version is released to it any more.
    /// Returns the devices whose target may have changed.
    pub fn delete_group(
        &mut self,
        product: ProductId,
        group: &str,
    ) -> Result<Vec<DeviceId>, FleetError> {
        let p = self.product_mut(product)?;
        if !p.groups.remove(group) {
            return Err(FleetError::NoGroup {
                product,
                group: group.to_string(),
            });
        }
        for f in p.firmware.values_mut() {
            f.groups.remove(group);
        }
        for d in p.devices.values_mut() {
            d.groups.remove(group);
        }
        Ok(p.devices.keys().copied().collect())
    }

    /// Puts back a version's release state as it was saved (restoring `--state`): no moving of
    /// the default or groups from other versions, the saved rows already say who has them.
    pub fn restore_release(
        &mut self,
        product: ProductId,
        version: u16,
        release: &Release,
        released_at: Option<Duration>,
    ) -> Result<(), FleetError> {
        for g in &release.groups {
            valid_group(g)?;
        }
        let p = self.product_mut(product)?;
        p.groups.extend(release.groups.iter().cloned());
        let f = p
            .firmware
            .get_mut(&version)
            .ok_or(FleetError::NoFirmware { product, version })?;
        f.product_default = release.product_default;
        f.groups = release.groups.clone();
        f.intelligent = release.intelligent;
        f.released_at = released_at;
        Ok(())
    }

    /// A product by its id, or by its name used as a slug (`:productIdOrSlug` in the API).
    pub fn find_product(&self, id_or_slug: &str) -> Option<&Product> {
        match id_or_slug.parse::<ProductId>() {
            Ok(id) => self.products.get(&id),
            Err(_) => self.products.values().find(|p| p.name == id_or_slug),
        }
    }

    /// Sets (or clears) a product's staged rollout; `None` if there is no such product.
    pub fn set_staged(&mut self, product: ProductId, staged: Option<Staged>) -> Option<()> {
        self.products.get_mut(&product)?.staged = staged;
        Some(())
    }

    /// Adds devices to a product's staged rollout.
    pub fn admit_staged(&mut self, product: ProductId, devices: &[DeviceId]) {
        if let Some(s) = self
            .products
            .get_mut(&product)
            .and_then(|p| p.staged.as_mut())
        {
            s.admitted.extend(devices.iter().copied());
        }
    }

    /// Takes devices out of a product's staged rollout (they go back to the default).
    pub fn withdraw_staged(&mut self, product: ProductId, devices: &[DeviceId]) {
        if let Some(s) = self
            .products
            .get_mut(&product)
            .and_then(|p| p.staged.as_mut())
        {
            for d in devices {
                s.admitted.remove(d);
            }
        }
    }

    /// The product firmware `device` should run, by the precedence in the module docs.
    pub fn target(&self, device: DeviceId) -> FleetTarget {
        let Some(p) = self
            .membership
            .get(&device)
            .and_then(|id| self.products.get(id))
        else {
            return FleetTarget::NotInProduct;
        };
        let Some(d) = p.devices.get(&device) else {
            return FleetTarget::NotInProduct;
        };
        if d.development {
            return FleetTarget::Development;
        }
        let pick = |f: &ProductFirmware, rule: Rule| {
            FleetTarget::Firmware(TargetFirmware {
                product: p.id,
                version: f.version,
                rule,
                intelligent: f.intelligent,
                file: f.file.clone(),
                sha256: f.sha256,
            })
        };
        if let Some(version) = d.locked {
            if let Some(f) = p.firmware.get(&version) {
                return pick(f, Rule::Locked);
            }
        }
        // Highest version released to any of the device's groups.
        let group = p.firmware.values().rev().find_map(|f| {
            d.groups
                .iter()
                .find(|g| f.groups.contains(*g))
                .map(|g| (f, g))
        });
        if let Some((f, g)) = group {
            return pick(f, Rule::Group(g.clone()));
        }
        if let Some(staged) = p.staged.as_ref().filter(|s| s.admitted.contains(&device)) {
            if let Some(f) = p.firmware.get(&staged.version) {
                return FleetTarget::Firmware(TargetFirmware {
                    product: p.id,
                    version: f.version,
                    rule: Rule::StagedRollout,
                    intelligent: staged.intelligent,
                    file: f.file.clone(),
                    sha256: f.sha256,
                });
            }
        }
        if let Some(f) = p.firmware.values().rev().find(|f| f.product_default) {
            return pick(f, Rule::ProductDefault);
        }
        FleetTarget::Untargeted
    }
}

/// The user part of a module file (plain or combined).
fn user_part_of(file: &[u8]) -> Result<Module, FleetError> {
    // An asset bundle (reference 6.1): its application, once the bundle checks out.
    if protocol::bundle::is_zip(file) {
        let bundle = protocol::bundle::Bundle::read(file)
            .map_err(|e| FleetError::NotAModule(format!("asset bundle: {e}")))?;
        return user_part_of(&bundle.app);
    }
    let ranges = split_combined(file).map_err(|e| FleetError::NotAModule(e.to_string()))?;
    let mut seen = Vec::new();
    for range in ranges {
        let bytes = file
            .get(range)
            .ok_or_else(|| FleetError::NotAModule("a module runs past the file's end".into()))?;
        let module = Module::parse(bytes).map_err(|e| FleetError::NotAModule(e.to_string()))?;
        if module.prefix.function == ModuleFunction::UserPart {
            return Ok(module);
        }
        seen.push(format!("{:?}", module.prefix.function));
    }
    Err(FleetError::NoUserPart(seen.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::module::ModuleBuilder;

    const P: ProductId = 1000;

    fn app(version: u16) -> Vec<u8> {
        ModuleBuilder::new(ModuleFunction::UserPart, 13)
            .index(2)
            .version(6)
            .start_address(0xB4000)
            .product(13, version)
            .body(vec![version as u8; 64])
            .build()
            .unwrap()
    }

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 12])
    }

    fn fleet() -> Fleet {
        let mut f = Fleet::new();
        f.create_product(P, "trackers", 13).unwrap();
        for v in 1..=4 {
            f.upload(P, v, "", "", app(v), Duration::ZERO).unwrap();
        }
        for n in 1..=5 {
            f.add_device(P, dev(n)).unwrap();
        }
        f
    }

    fn version(f: &Fleet, d: DeviceId) -> Option<u16> {
        f.target(d).firmware().map(|t| t.version)
    }

    fn groups(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn precedence_one_device_per_rule() {
        let mut f = fleet();
        let t = Duration::ZERO;
        f.release(
            P,
            2,
            &Release {
                product_default: true,
                ..Release::default()
            },
            t,
        )
        .unwrap();
        f.release(
            P,
            3,
            &Release {
                groups: groups(&["beta"]),
                ..Release::default()
            },
            t,
        )
        .unwrap();
        f.release(
            P,
            4,
            &Release {
                groups: groups(&["canary"]),
                ..Release::default()
            },
            t,
        )
        .unwrap();
        // 1: development, even if locked.
        f.change_device(
            P,
            dev(1),
            &DeviceChange {
                development: Some(true),
                locked: Some(Some(4)),
                ..DeviceChange::default()
            },
        )
        .unwrap();
        assert_eq!(f.target(dev(1)), FleetTarget::Development);
        // 2: locked to 1 beats groups and default.
        f.change_device(
            P,
            dev(2),
            &DeviceChange {
                locked: Some(Some(1)),
                groups: Some(groups(&["canary"])),
                ..DeviceChange::default()
            },
        )
        .unwrap();
        assert_eq!(version(&f, dev(2)), Some(1));
        assert_eq!(f.target(dev(2)).firmware().unwrap().rule, Rule::Locked);
        // 3: in two groups with releases: the highest version wins.
        f.change_device(
            P,
            dev(3),
            &DeviceChange {
                groups: Some(groups(&["beta", "canary"])),
                ..DeviceChange::default()
            },
        )
        .unwrap();
        assert_eq!(version(&f, dev(3)), Some(4));
        // 4: no group: the product default.
        assert_eq!(version(&f, dev(4)), Some(2));
        assert_eq!(
            f.target(dev(4)).firmware().unwrap().rule,
            Rule::ProductDefault
        );
        // Not in the product.
        assert_eq!(f.target(dev(9)), FleetTarget::NotInProduct);
        // Unlock: back to its group.
        f.change_device(
            P,
            dev(2),
            &DeviceChange {
                locked: Some(None),
                ..DeviceChange::default()
            },
        )
        .unwrap();
        assert_eq!(version(&f, dev(2)), Some(4));
    }

    #[test]
    fn nothing_released_means_no_target() {
        let f = fleet();
        assert_eq!(f.target(dev(1)), FleetTarget::Untargeted);
    }

    #[test]
    fn upload_checks_version_and_platform() {
        let mut f = fleet();
        assert_eq!(
            f.upload(P, 7, "", "", app(8), Duration::ZERO).unwrap_err(),
            FleetError::VersionMismatch {
                given: 7,
                in_binary: 8
            }
        );
        let argon = ModuleBuilder::new(ModuleFunction::UserPart, 12)
            .index(2)
            .version(6)
            .start_address(0xB4000)
            .product(12, 9)
            .body(vec![0; 64])
            .build()
            .unwrap();
        assert!(matches!(
            f.upload(P, 9, "", "", argon, Duration::ZERO),
            Err(FleetError::WrongPlatform { binary: 12, .. })
        ));
        assert_eq!(
            f.upload(P, 4, "", "", app(4), Duration::ZERO).unwrap_err(),
            FleetError::DuplicateVersion {
                product: P,
                version: 4
            }
        );
        assert!(matches!(
            f.upload(P, 9, "", "", vec![1, 2, 3], Duration::ZERO),
            Err(FleetError::NotAModule(_))
        ));
    }

    #[test]
    fn upload_refuses_a_bundle_whose_asset_exceeds_the_platform_limit() {
        use protocol::bundle::{Asset, Bundle};
        let mut f = fleet();
        let mut x = 7u32;
        // Incompressible: the asset module stays about as large as the asset.
        let noise: Vec<u8> = (0..700 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let big = Bundle::create("app.bin", &app(5), vec![Asset::new("big.bin", noise)])
            .unwrap()
            .to_zip()
            .unwrap();
        match f.upload(P, 5, "", "", big, Duration::ZERO) {
            Err(FleetError::AssetsTooLarge(why)) => {
                assert!(why.contains("big.bin") && why.contains("606208"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // The refused upload left nothing behind: version 5 is still free.
        let small = Bundle::create("app.bin", &app(5), vec![Asset::new("s.txt", vec![1; 4096])])
            .unwrap()
            .to_zip()
            .unwrap();
        f.upload(P, 5, "", "", small, Duration::ZERO).unwrap();
    }

    #[test]
    fn released_firmware_cannot_be_deleted() {
        let mut f = fleet();
        f.delete_firmware(P, 1).unwrap();
        f.release(
            P,
            2,
            &Release {
                product_default: true,
                ..Release::default()
            },
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            f.delete_firmware(P, 2),
            Err(FleetError::Released {
                product: P,
                version: 2
            })
        );
    }

    #[test]
    fn a_refused_device_change_changes_nothing() {
        let mut f = fleet();
        let before = f.clone();
        let change = DeviceChange {
            groups: Some(groups(&["beta"])),
            ..DeviceChange::default()
        };
        assert_eq!(
            f.change_device(P, dev(9), &change),
            Err(FleetError::NotInProduct {
                product: P,
                device: dev(9)
            })
        );
        let bad_lock = DeviceChange {
            groups: Some(groups(&["beta"])),
            locked: Some(Some(42)),
            ..DeviceChange::default()
        };
        assert!(f.change_device(P, dev(1), &bad_lock).is_err());
        assert_eq!(f, before);
    }

    #[test]
    fn restored_release_state_is_taken_as_saved() {
        let mut f = fleet();
        let r = Release {
            product_default: true,
            groups: groups(&["beta"]),
            intelligent: true,
        };
        f.restore_release(P, 3, &r, Some(Duration::from_secs(7)))
            .unwrap();
        let v3 = &f.product(P).unwrap().firmware[&3];
        assert!(v3.product_default && v3.intelligent);
        assert_eq!(v3.released_at, Some(Duration::from_secs(7)));
        assert!(f.product(P).unwrap().groups.contains("beta"));
        assert_eq!(version(&f, dev(1)), Some(3));
    }

    #[test]
    fn a_deleted_group_leaves_devices_and_releases() {
        let mut f = fleet();
        let beta = Release {
            groups: groups(&["beta"]),
            ..Release::default()
        };
        f.release(P, 3, &beta, Duration::ZERO).unwrap();
        let join = DeviceChange {
            groups: Some(groups(&["beta"])),
            ..DeviceChange::default()
        };
        f.change_device(P, dev(1), &join).unwrap();
        assert_eq!(version(&f, dev(1)), Some(3));
        f.delete_group(P, "beta").unwrap();
        assert_eq!(f.target(dev(1)), FleetTarget::Untargeted);
        assert!(f.device(dev(1)).unwrap().groups.is_empty());
        assert!(f.product(P).unwrap().firmware[&3].groups.is_empty());
        assert!(matches!(
            f.delete_group(P, "beta"),
            Err(FleetError::NoGroup { .. })
        ));
    }

    #[test]
    fn products_are_found_by_id_or_name() {
        let f = fleet();
        assert_eq!(f.find_product("1000").map(|p| p.id), Some(P));
        assert_eq!(f.find_product("trackers").map(|p| p.id), Some(P));
        assert!(f.find_product("nope").is_none());
    }

    #[test]
    fn a_new_default_release_moves_the_default() {
        let mut f = fleet();
        let default = Release {
            product_default: true,
            ..Release::default()
        };
        f.release(P, 3, &default, Duration::ZERO).unwrap();
        f.release(P, 2, &default, Duration::ZERO).unwrap();
        // The default is what was released last, even if older.
        assert_eq!(version(&f, dev(4)), Some(2));
    }
}
