//! What the cloud sends a device, decided in one place and without I/O: the device's own
//! describe compared with its target, Device OS healing, the updates-disabled hold, and the
//! retry bound. [`super::Cloud`] gathers the facts, calls [`next_step`], and acts.
//!
//! # The target (desired state)
//! In this order: a single-device flash not yet finished; for a product device, the product
//! firmware armed for it (precedence in [`super::fleet`]; armed at each full handshake for a
//! standard release, at once for an intelligent release or a lock with "flash now"); then,
//! whatever the target, the Device OS modules that the installed firmware lacks (healing).
//! A device is on target only when its describe, in a connection that started after the
//! update's reset, lists every module of the target and each passed the checks it ran.
//!
//! # Choices (UNCONFIRMED: the reference documents what the cloud does, not how it decides)
//! - **Healing order**: for a module that fails its dependency check, each unmet dependency
//!   is looked up in the cloud's Device OS library (same platform, same function and index,
//!   the lowest version that satisfies it). If that module's own dependencies are not met by
//!   what the device has, its unmet dependency is sent first (bootloader before system part,
//!   as the capture in `particle-cloud-api.md` 4.7 shows). One module per transfer, each
//!   followed by the device's reboot. No module in the library, or a chain deeper than
//!   [`MAX_CHAIN`] (a loop), is reported as unreachable and never retried.
//! - **Hold**: updates disabled on the device (its last `particle/device/updates/enabled`) and
//!   not forced (the cloud's setting, echoed by the device, reference 4.6) holds the update;
//!   the cloud says `particle/device/updates/pending` `true` and starts it when the device
//!   enables updates or echoes forced.
//! - **Retries**: at most [`DEFAULT_MAX_ATTEMPTS`] UpdateStarts per target; an interrupted
//!   transfer, a device back without its update, or a device error that another attempt may
//!   cure counts one. Module errors ([`is_permanent`]) end the target at once: the same file
//!   would fail the same way.

use std::sync::Arc;

use protocol::message::SystemDescribe;
use protocol::module::{combine, split_combined, Dependency, Module, ModuleFunction};

use super::firmware::Comparison;

/// UpdateStarts per target before the cloud gives up.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Deepest chain of Device OS modules the healer follows.
pub const MAX_CHAIN: usize = 8;

/// Device OS error codes from an UpdateStart or UpdateFinish that another attempt of the same
/// file cannot cure: the module errors (-1300 not found / out of range, -1310 unsupported,
/// -1320 validation, -1330/-1331 integrity, -1340 dependency, -1350 address, -1360 platform,
/// -1370 format) and -190 (too large). -1380 (updates disabled) is a hold, not a failure.
pub fn is_permanent(code: i32) -> bool {
    matches!(code, -1379..=-1300 | -190)
}

/// Device OS's "updates disabled" refusal.
pub const UPDATES_DISABLED: i32 = -1380;

/// A Device OS module the cloud can send to heal devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryModule {
    pub platform_id: u16,
    pub function: ModuleFunction,
    pub index: u8,
    pub version: u16,
    pub dependencies: Vec<Dependency>,
    pub file: Arc<Vec<u8>>,
}

impl LibraryModule {
    pub fn describe(&self) -> String {
        format!(
            "{} {} version {} (platform {})",
            function_name(self.function),
            self.index,
            self.version,
            self.platform_id
        )
    }
}

/// The data of `spark/safe-mode-updater/updating` for `module`: the module in the notation of
/// the legacy describe (`{"f":"b","n":"0","v":3100}`: function letter, index, version), so an
/// operator (and a scenario) sees which module each healing transfer carries.
/// UNCONFIRMED: the event name is in Particle's docs (reference 3); its data is not, this is
/// the project's choice.
pub fn updater_data(module: &LibraryModule) -> String {
    format!(
        "{{\"f\":\"{}\",\"n\":\"{}\",\"v\":{}}}",
        function_letter(module.function),
        module.index,
        module.version
    )
}

/// The describe's letter for a module function (reference 4.1: `n r b m s u _ c a t`).
fn function_letter(f: ModuleFunction) -> char {
    let letters = ['n', 'r', 'b', 'm', 's', 'u', '_', 'c', 'a', 't'];
    letters
        .get(usize::from(u8::from(f)))
        .copied()
        .unwrap_or('n')
}

fn function_name(f: ModuleFunction) -> &'static str {
    match f {
        ModuleFunction::Bootloader => "bootloader",
        ModuleFunction::SystemPart => "system part",
        ModuleFunction::RadioStack => "radio stack",
        ModuleFunction::NcpFirmware => "NCP firmware",
        ModuleFunction::UserPart => "user part",
        ModuleFunction::Asset => "asset",
        _ => "module",
    }
}

/// The Device OS modules (bootloaders, system parts, radio stacks) the cloud holds.
#[derive(Debug, Clone, Default)]
pub struct DeviceOsLibrary {
    modules: Vec<LibraryModule>,
}

impl DeviceOsLibrary {
    /// Adds a module file (one module, not a user part or an asset). Adding the same
    /// function, index, version and platform again replaces it.
    pub fn add(&mut self, file: Vec<u8>) -> Result<LibraryModule, String> {
        let ranges = split_combined(&file).map_err(|e| format!("not a module file: {e}"))?;
        if ranges.len() != 1 {
            return Err(format!(
                "a combined file of {} modules: give each Device OS module on its own",
                ranges.len()
            ));
        }
        let module = Module::parse(&file).map_err(|e| format!("not a module file: {e}"))?;
        if !module.crc_valid() {
            return Err("the module's CRC is wrong".into());
        }
        let function = module.prefix.function;
        if !matches!(
            function,
            ModuleFunction::Bootloader
                | ModuleFunction::SystemPart
                | ModuleFunction::RadioStack
                | ModuleFunction::NcpFirmware
        ) {
            return Err(format!(
                "a {} is not a Device OS module",
                function_name(function)
            ));
        }
        let entry = LibraryModule {
            platform_id: module.prefix.platform_id,
            function,
            index: module.prefix.index,
            version: module.prefix.version,
            dependencies: module
                .prefix
                .dependencies
                .iter()
                .filter(|d| !d.is_empty())
                .copied()
                .collect(),
            file: Arc::new(file),
        };
        self.modules.retain(|m| {
            (m.platform_id, m.function, m.index, m.version)
                != (
                    entry.platform_id,
                    entry.function,
                    entry.index,
                    entry.version,
                )
        });
        self.modules.push(entry.clone());
        Ok(entry)
    }

    pub fn modules(&self) -> &[LibraryModule] {
        &self.modules
    }

    /// The lowest version for `platform` that satisfies `need`.
    fn best(&self, platform: u16, need: &Need) -> Option<&LibraryModule> {
        self.modules
            .iter()
            .filter(|m| {
                m.platform_id == platform
                    && i32::from(u8::from(m.function)) == need.module_type
                    && u32::from(m.index) == need.index
                    && u32::from(m.version) >= need.version
            })
            .min_by_key(|m| m.version)
    }
}

/// A dependency as the describe states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Need {
    module_type: i32,
    index: u32,
    version: u32,
}

impl Need {
    fn text(&self) -> String {
        let name = u8::try_from(self.module_type)
            .map(|t| function_name(ModuleFunction::from(t)))
            .unwrap_or("module");
        format!("{name} {} >= {}", self.index, self.version)
    }
}

fn met(describe: &SystemDescribe, need: &Need) -> bool {
    describe
        .firmware_modules
        .iter()
        .any(|m| m.r#type == need.module_type && m.index == need.index && m.version >= need.version)
}

/// What healing needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heal<'a> {
    /// No module fails its dependency check.
    Healthy,
    Send(&'a LibraryModule),
    /// A dependency no module of the library satisfies, or a loop; the sentence says which.
    Stuck(String),
}

/// The next Device OS module to send a device whose describe shows unmet dependencies.
pub fn heal<'a>(
    describe: &SystemDescribe,
    platform: u16,
    library: &'a DeviceOsLibrary,
) -> Heal<'a> {
    let mut unmet = Vec::new();
    for m in &describe.firmware_modules {
        let failed = m.checked_flags & !m.passed_flags;
        if failed & (0x04 | 0x40) == 0 {
            continue;
        }
        for d in &m.dependencies {
            let need = Need {
                module_type: d.r#type,
                index: d.index,
                version: d.version,
            };
            if need.module_type != 0 && !met(describe, &need) && !unmet.contains(&need) {
                unmet.push(need);
            }
        }
    }
    if unmet.is_empty() {
        let failing = describe
            .firmware_modules
            .iter()
            .any(|m| (m.checked_flags & !m.passed_flags) & (0x04 | 0x40) != 0);
        return if failing {
            Heal::Stuck(
                "a module fails its dependency check but every dependency it lists is met".into(),
            )
        } else {
            Heal::Healthy
        };
    }
    let mut reasons = Vec::new();
    for need in unmet {
        match resolve(describe, platform, library, need, 0) {
            Ok(m) => return Heal::Send(m),
            Err(why) => reasons.push(why),
        }
    }
    Heal::Stuck(reasons.join("; "))
}

fn resolve<'a>(
    describe: &SystemDescribe,
    platform: u16,
    library: &'a DeviceOsLibrary,
    need: Need,
    depth: usize,
) -> Result<&'a LibraryModule, String> {
    if depth >= MAX_CHAIN {
        return Err(format!(
            "the Device OS modules needed for {} depend on each other in a chain deeper than {MAX_CHAIN} (a loop)",
            need.text()
        ));
    }
    let Some(module) = library.best(platform, &need) else {
        return Err(format!(
            "the cloud has no Device OS module for platform {platform} that satisfies {}",
            need.text()
        ));
    };
    for d in &module.dependencies {
        let inner = Need {
            module_type: i32::from(u8::from(d.function)),
            index: u32::from(d.index),
            version: u32::from(d.version),
        };
        if !met(describe, &inner) {
            return resolve(describe, platform, library, inner, depth + 1);
        }
    }
    Ok(module)
}

/// Device OS versions from which Particle's cloud sends a system part and the app in one
/// combined transfer (reference 2.6: "when the device runs >= 3.1.0").
pub const COMBINED_FROM: u32 = 3100;

/// The product firmware `app_file` combined with the system part it needs, when reference 2.6
/// and 7 say the cloud sends them together: a minor Device OS bump ("only the system part
/// changes") on a device on >= 3.1.0. That is: `app_file` is one user part whose system part
/// dependency the describe does not meet; the library's lowest system part that meets it has
/// the same major version as the installed one and every dependency of its own (bootloader,
/// radio stack) met by what the device has. Anything else (no such module, a bootloader or
/// radio stack to send too, a major bump, a device below 3.1.0) gets `None`: the app goes
/// alone and the modules follow in safe mode, one transfer each (healing).
/// UNCONFIRMED: "minor" read as "same major version"; the docs show the combined transfer but
/// not the cloud's rule.
pub fn combined_upgrade(
    describe: &SystemDescribe,
    platform: u16,
    library: &DeviceOsLibrary,
    app_file: &[u8],
) -> Option<Arc<Vec<u8>>> {
    if split_combined(app_file).ok()?.len() != 1 {
        return None;
    }
    let app = Module::parse(app_file).ok()?;
    if app.prefix.function != ModuleFunction::UserPart {
        return None;
    }
    let dep = app
        .prefix
        .dependencies
        .iter()
        .find(|d| d.function == ModuleFunction::SystemPart)?;
    let need = Need {
        module_type: i32::from(u8::from(ModuleFunction::SystemPart)),
        index: u32::from(dep.index),
        version: u32::from(dep.version),
    };
    if met(describe, &need) {
        return None;
    }
    let installed = describe
        .firmware_modules
        .iter()
        .find(|m| m.r#type == need.module_type && m.index == need.index)?
        .version;
    let system = library.best(platform, &need)?;
    let only_the_system_part = system.dependencies.iter().all(|d| {
        met(
            describe,
            &Need {
                module_type: i32::from(u8::from(d.function)),
                index: u32::from(d.index),
                version: u32::from(d.version),
            },
        )
    });
    if installed < COMBINED_FROM
        || installed / 1000 != u32::from(system.version) / 1000
        || !only_the_system_part
    {
        return None;
    }
    combine(&[system.file.as_slice(), app_file])
        .ok()
        .map(Arc::new)
}

/// Whether an update may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Updates disabled on the device and not forced.
    Held,
}

/// `updates_enabled`: what the device last said; `forced_setting`: the cloud's force-enable;
/// `forced_echo`: what the device last said about forced.
pub fn gate(
    updates_enabled: Option<bool>,
    forced_setting: bool,
    forced_echo: Option<bool>,
) -> Gate {
    if updates_enabled != Some(false) || (forced_setting && forced_echo == Some(true)) {
        Gate::Open
    } else {
        Gate::Held
    }
}

/// What the cloud does next for a device that is online, settled, and whose describe for this
/// connection is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// Nothing to send (no target and nothing to heal).
    Nothing,
    /// The device runs its target: the target is done.
    OnTarget,
    /// Send the target's file (it differs, or runs but is invalid for a reason other than
    /// Device OS dependencies).
    SendTarget,
    /// Send this Device OS module.
    Heal(&'a LibraryModule),
    /// Updates are disabled: say pending and wait.
    Hold,
    /// The target cannot be reached; the sentence says why.
    GiveUp(String),
}

/// The decision (rules in the module docs). `target` is the comparison of the device's
/// describe with its target, `None` without a target; `attempts` the UpdateStarts already
/// made for it and `last_reason` why the last one did not end it (the give-up sentence
/// names it, else what the describe shows).
pub fn next_step<'a>(
    target: Option<&Comparison>,
    heal: Heal<'a>,
    gate: Gate,
    attempts: u32,
    max_attempts: u32,
    last_reason: Option<&str>,
) -> Step<'a> {
    let gated = |step: Step<'a>| match gate {
        Gate::Open => step,
        Gate::Held => Step::Hold,
    };
    let exhausted = |what: &str| {
        Step::GiveUp(format!(
            "gave up after {attempts} attempts: {}",
            last_reason.unwrap_or(what)
        ))
    };
    match target {
        None => match heal {
            Heal::Send(m) => gated(Step::Heal(m)),
            Heal::Healthy | Heal::Stuck(_) => Step::Nothing,
        },
        Some(Comparison::OnTarget) => Step::OnTarget,
        Some(Comparison::Invalid {
            unmet_dependency: true,
            message,
        }) => match heal {
            Heal::Send(m) => gated(Step::Heal(m)),
            Heal::Stuck(why) => Step::GiveUp(format!("{message}, and {why}")),
            Heal::Healthy => Step::GiveUp(message.clone()),
        },
        Some(Comparison::Invalid { message, .. }) | Some(Comparison::Differs(message)) => {
            if attempts >= max_attempts {
                exhausted(message)
            } else {
                gated(Step::SendTarget)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::message::{FirmwareModule, FirmwareModuleDependency};
    use protocol::module::ModuleBuilder;

    fn module(function: ModuleFunction, index: u8, version: u16, deps: &[Dependency]) -> Vec<u8> {
        let mut b = ModuleBuilder::new(function, 13)
            .index(index)
            .version(version)
            .start_address(0x30000)
            .body(vec![version as u8; 64]);
        for d in deps {
            b = b.dependency(*d);
        }
        b.build().unwrap()
    }

    fn dep(function: ModuleFunction, index: u8, version: u16) -> Dependency {
        Dependency {
            function,
            index,
            version,
        }
    }

    /// A Boron on system part 5800 and bootloader 2300 whose app needs system part 6200.
    fn safe_mode_describe() -> SystemDescribe {
        SystemDescribe {
            firmware_modules: vec![
                FirmwareModule {
                    r#type: 2,
                    index: 0,
                    version: 2300,
                    checked_flags: 0x1e,
                    passed_flags: 0x1e,
                    ..Default::default()
                },
                FirmwareModule {
                    r#type: 4,
                    index: 1,
                    version: 5800,
                    checked_flags: 0x1e,
                    passed_flags: 0x1e,
                    ..Default::default()
                },
                FirmwareModule {
                    r#type: 5,
                    index: 2,
                    version: 6,
                    checked_flags: 0x1e,
                    passed_flags: 0x1a,
                    dependencies: vec![FirmwareModuleDependency {
                        r#type: 4,
                        index: 1,
                        version: 6200,
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn healing_sends_the_bootloader_the_system_part_needs_first() {
        let mut library = DeviceOsLibrary::default();
        library
            .add(module(
                ModuleFunction::SystemPart,
                1,
                6200,
                &[dep(ModuleFunction::Bootloader, 0, 3000)],
            ))
            .unwrap();
        library
            .add(module(ModuleFunction::Bootloader, 0, 3000, &[]))
            .unwrap();
        library
            .add(module(ModuleFunction::SystemPart, 1, 6300, &[]))
            .unwrap();
        let describe = safe_mode_describe();
        match heal(&describe, 13, &library) {
            Heal::Send(m) => {
                assert_eq!((m.function, m.version), (ModuleFunction::Bootloader, 3000))
            }
            other => panic!("{other:?}"),
        }
        // With the bootloader in place, the lowest system part that satisfies the app.
        let mut after = describe.clone();
        after.firmware_modules[0].version = 3000;
        match heal(&after, 13, &library) {
            Heal::Send(m) => {
                assert_eq!((m.function, m.version), (ModuleFunction::SystemPart, 6200))
            }
            other => panic!("{other:?}"),
        }
        // Another platform's library has nothing for it.
        assert!(matches!(heal(&after, 12, &library), Heal::Stuck(_)));
    }

    /// Device OS 6.2.0's modules for a Boron, as the healer's library holds them.
    fn library_6200() -> DeviceOsLibrary {
        let mut library = DeviceOsLibrary::default();
        library
            .add(module(
                ModuleFunction::SystemPart,
                1,
                6200,
                &[
                    dep(ModuleFunction::Bootloader, 0, 3100),
                    dep(ModuleFunction::RadioStack, 0, 202),
                ],
            ))
            .unwrap();
        library
            .add(module(ModuleFunction::Bootloader, 0, 3100, &[]))
            .unwrap();
        library
            .add(module(
                ModuleFunction::RadioStack,
                0,
                202,
                &[dep(ModuleFunction::SystemPart, 1, 1300)],
            ))
            .unwrap();
        library
    }

    fn sent(heal: Heal) -> (ModuleFunction, u16) {
        match heal {
            Heal::Send(m) => (m.function, m.version),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn healing_a_5_5_0_device_with_an_old_radio_stack_sends_bootloader_radio_stack_then_system_part(
    ) {
        let library = library_6200();
        let mut describe = safe_mode_describe();
        describe.firmware_modules[0].version = 2300;
        describe.firmware_modules[1].version = 5500;
        describe.firmware_modules.push(FirmwareModule {
            r#type: 8,
            index: 0,
            version: 182,
            checked_flags: 0x1e,
            passed_flags: 0x1e,
            ..Default::default()
        });
        // The system part the app needs depends on both; its first dependency goes first.
        assert_eq!(
            sent(heal(&describe, 13, &library)),
            (ModuleFunction::Bootloader, 3100)
        );
        describe.firmware_modules[0].version = 3100;
        assert_eq!(
            sent(heal(&describe, 13, &library)),
            (ModuleFunction::RadioStack, 202)
        );
        describe.firmware_modules[3].version = 202;
        assert_eq!(
            sent(heal(&describe, 13, &library)),
            (ModuleFunction::SystemPart, 6200)
        );
    }

    /// A Boron on 6.2.0 (bootloader 3100, radio stack 202) whose app is `app`.
    fn describe_6200() -> SystemDescribe {
        let mut d = safe_mode_describe();
        d.firmware_modules[0].version = 3100;
        d.firmware_modules[1].version = 6200;
        d.firmware_modules[2].dependencies[0].version = 6200;
        d.firmware_modules[2].passed_flags = 0x1e;
        d.firmware_modules.push(FirmwareModule {
            r#type: 8,
            index: 0,
            version: 202,
            checked_flags: 0x1e,
            passed_flags: 0x1e,
            ..Default::default()
        });
        d
    }

    fn app_needing(system_part: u16) -> Vec<u8> {
        module(
            ModuleFunction::UserPart,
            2,
            6,
            &[dep(ModuleFunction::SystemPart, 1, system_part)],
        )
    }

    #[test]
    fn only_a_minor_system_part_bump_goes_combined_with_the_app() {
        let mut library = library_6200();
        for (version, bootloader) in [(6201, 3100), (7000, 3100), (6202, 3200)] {
            library
                .add(module(
                    ModuleFunction::SystemPart,
                    1,
                    version,
                    &[
                        dep(ModuleFunction::Bootloader, 0, bootloader),
                        dep(ModuleFunction::RadioStack, 0, 202),
                    ],
                ))
                .unwrap();
        }
        let describe = describe_6200();
        let app = app_needing(6201);
        let file = combined_upgrade(&describe, 13, &library, &app).expect("combined");
        let parts = split_combined(&file).unwrap();
        assert_eq!(parts.len(), 2);
        let first = Module::parse(&file[parts[0].clone()]).unwrap();
        assert_eq!(
            (first.prefix.function, first.prefix.version),
            (ModuleFunction::SystemPart, 6201)
        );
        assert_eq!(&file[parts[1].clone()], &app[..]);
        // Already met: the app alone.
        assert_eq!(
            combined_upgrade(&describe, 13, &library, &app_needing(6200)),
            None
        );
        // A major bump, a system part that needs a newer bootloader, no module: healing.
        assert_eq!(
            combined_upgrade(&describe, 13, &library, &app_needing(7000)),
            None
        );
        assert_eq!(
            combined_upgrade(&describe, 13, &library, &app_needing(6202)),
            None
        );
        assert_eq!(
            combined_upgrade(&describe, 13, &library, &app_needing(6300)),
            None
        );
        // A device below 3.1.0.
        let mut old = describe.clone();
        old.firmware_modules[1].version = 3000;
        library
            .add(module(ModuleFunction::SystemPart, 1, 3005, &[]))
            .unwrap();
        assert_eq!(
            combined_upgrade(&old, 13, &library, &app_needing(3005)),
            None
        );
    }

    #[test]
    fn the_updater_event_names_the_module_as_the_describe_does() {
        let library = library_6200();
        let data: Vec<String> = library.modules().iter().map(updater_data).collect();
        assert_eq!(
            data,
            vec![
                r#"{"f":"s","n":"1","v":6200}"#,
                r#"{"f":"b","n":"0","v":3100}"#,
                r#"{"f":"a","n":"0","v":202}"#,
            ]
        );
    }

    #[test]
    fn a_dependency_loop_is_stuck_not_endless() {
        let mut library = DeviceOsLibrary::default();
        library
            .add(module(
                ModuleFunction::SystemPart,
                1,
                6200,
                &[dep(ModuleFunction::Bootloader, 0, 3000)],
            ))
            .unwrap();
        library
            .add(module(
                ModuleFunction::Bootloader,
                0,
                3000,
                &[dep(ModuleFunction::SystemPart, 1, 6200)],
            ))
            .unwrap();
        match heal(&safe_mode_describe(), 13, &library) {
            Heal::Stuck(why) => assert!(why.contains("loop"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_healthy_device_needs_nothing() {
        let mut describe = safe_mode_describe();
        describe.firmware_modules[2].passed_flags = 0x1e;
        assert_eq!(
            heal(&describe, 13, &DeviceOsLibrary::default()),
            Heal::Healthy
        );
    }

    #[test]
    fn the_library_takes_only_device_os_modules() {
        let mut library = DeviceOsLibrary::default();
        let app = module(ModuleFunction::UserPart, 2, 6, &[]);
        assert!(library.add(app).unwrap_err().contains("user part"));
        assert!(library.add(vec![0; 10]).is_err());
    }

    #[test]
    fn updates_disabled_hold_unless_forced_and_echoed() {
        assert_eq!(gate(None, false, None), Gate::Open);
        assert_eq!(gate(Some(true), false, None), Gate::Open);
        assert_eq!(gate(Some(false), false, None), Gate::Held);
        assert_eq!(gate(Some(false), true, None), Gate::Held);
        assert_eq!(gate(Some(false), true, Some(true)), Gate::Open);
    }

    #[test]
    fn steps() {
        let differs = Comparison::Differs("old app".into());
        assert_eq!(
            next_step(Some(&differs), Heal::Healthy, Gate::Open, 0, 5, None),
            Step::SendTarget
        );
        assert_eq!(
            next_step(Some(&differs), Heal::Healthy, Gate::Held, 0, 5, None),
            Step::Hold
        );
        assert!(matches!(
            next_step(Some(&differs), Heal::Healthy, Gate::Open, 5, 5, Some("interrupted")),
            Step::GiveUp(m) if m == "gave up after 5 attempts: interrupted"
        ));
        assert_eq!(
            next_step(
                Some(&Comparison::OnTarget),
                Heal::Healthy,
                Gate::Held,
                9,
                5,
                None
            ),
            Step::OnTarget
        );
        assert_eq!(
            next_step(None, Heal::Healthy, Gate::Open, 0, 5, None),
            Step::Nothing
        );
        let unmet = Comparison::Invalid {
            message: "app needs system part".into(),
            unmet_dependency: true,
        };
        assert!(matches!(
            next_step(Some(&unmet), Heal::Stuck("no module".into()), Gate::Open, 1, 5, None),
            Step::GiveUp(m) if m.contains("no module")
        ));
    }

    #[test]
    fn module_errors_are_permanent() {
        for code in [-1300, -1330, -1331, -1360, -190] {
            assert!(is_permanent(code), "{code}");
        }
        for code in [-1380, -160, -219, -140] {
            assert!(!is_permanent(code), "{code}");
        }
    }
}
