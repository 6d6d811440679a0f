//! Does the device run the file it was sent? The modules of an OTA file (reference section 4,
//! combined files 4.6, compressed 4.5) compared with what the device reports after its reboot:
//! the system describe's `firmware_modules` (reference 1.10) and the Hello's product version
//! (1.7).
//!
//! Rules (the cloud's side is UNCONFIRMED; these are the checks an operator would make):
//! - every module of the file but assets (reported in the describe's `assets`, not checked) must
//!   be listed with the same type (module function) and index;
//! - a user part matches by SHA-256 when the describe carries a hash (the suffix SHA-256 of the
//!   module as sent, with COMBINED cleared, or of the inflated module), else by the product
//!   version in the Hello when the module has product data, else by module version;
//! - any other module matches by module version.

use protocol::message::{Hello, SystemDescribe};
use protocol::module::{
    decompress_module, split_combined, split_combined_modules, Module, ModuleFlags, ModuleFunction,
};

/// One module the device should report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedModule {
    pub function: ModuleFunction,
    pub index: u8,
    pub version: u16,
    /// Product firmware version from the suffix, when it has product data.
    pub product_version: Option<u16>,
    /// SHA-256 values the describe may show for it (user parts only).
    pub hashes: Vec<[u8; 32]>,
}

/// The modules of `file`, or `None` if it is not a module file the device could install.
pub fn expected_modules(file: &[u8]) -> Option<Vec<ExpectedModule>> {
    let ranges = split_combined(file).ok()?;
    let cleared = split_combined_modules(file).ok()?;
    let mut out = Vec::new();
    for (range, plain) in ranges.into_iter().zip(cleared) {
        let bytes = file.get(range)?;
        let module = Module::parse(bytes).ok()?;
        let mut hashes = Vec::new();
        if module.prefix.function == ModuleFunction::UserPart {
            hashes.push(module.sha256());
            if let Ok(m) = Module::parse(&plain) {
                hashes.push(m.sha256());
            }
            if module.prefix.flags.contains(ModuleFlags::COMPRESSED) {
                if let Some(inner) = decompress_module(&plain)
                    .ok()
                    .and_then(|d| Module::parse(&d).ok())
                {
                    hashes.push(inner.sha256());
                }
            }
            hashes.dedup();
        }
        out.push(ExpectedModule {
            function: module.prefix.function,
            index: module.prefix.index,
            version: module.prefix.version,
            product_version: module.product_version(),
            hashes,
        });
    }
    Some(out)
}

fn function_name(f: ModuleFunction) -> String {
    match f {
        ModuleFunction::Bootloader => "bootloader".into(),
        ModuleFunction::SystemPart => "system part".into(),
        ModuleFunction::UserPart => "user part".into(),
        ModuleFunction::RadioStack => "radio stack".into(),
        ModuleFunction::NcpFirmware => "NCP firmware".into(),
        ModuleFunction::Asset => "asset".into(),
        other => format!("module function {}", u8::from(other)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How the device's own report compares with the modules it should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// Every expected module is listed, matches, and passed every check it ran.
    OnTarget,
    /// Every expected module is listed and matches, but one failed a check (the sentence says
    /// which); `unmet_dependency` when that check is the dependency check, so the device is
    /// in safe mode waiting for Device OS modules.
    Invalid {
        message: String,
        unmet_dependency: bool,
    },
    /// A module is missing or another version runs (the sentence names the first).
    Differs(String),
}

/// Validity bits (reference 1.10): DEPENDENCIES 0x04, DEPENDENCIES_FULL 0x40.
const DEPENDENCY_CHECKS: u32 = 0x04 | 0x40;

/// Compares the device's report with `expected` (rules in the module docs).
pub fn compare(
    expected: &[ExpectedModule],
    hello: Option<&Hello>,
    describe: &SystemDescribe,
) -> Comparison {
    let mut invalid = None;
    for e in expected {
        if e.function == ModuleFunction::Asset {
            continue;
        }
        let function = i32::from(u8::from(e.function));
        let candidates: Vec<_> = describe
            .firmware_modules
            .iter()
            .filter(|m| m.r#type == function && m.index == u32::from(e.index))
            .collect();
        let name = format!("{} {}", function_name(e.function), e.index);
        if candidates.is_empty() {
            return Comparison::Differs(format!("the device's describe lists no {name}"));
        }
        let matching = candidates.iter().find(|m| {
            if e.function == ModuleFunction::UserPart {
                if let Some(hash) = m.hash.as_deref().filter(|h| !h.is_empty()) {
                    return e.hashes.iter().any(|h| h.as_slice() == hash);
                }
                if let (Some(want), Some(hello)) = (e.product_version, hello) {
                    return hello.product_version == want;
                }
            }
            m.version == u32::from(e.version)
        });
        let Some(m) = matching else {
            let reported: Vec<String> = candidates
                .iter()
                .map(|m| match m.hash.as_deref() {
                    Some(h) if !h.is_empty() => format!("version {} hash {}", m.version, hex(h)),
                    _ => format!("version {}", m.version),
                })
                .collect();
            return Comparison::Differs(format!(
                "the device reports {name} as {} instead of version {}{}",
                reported.join(", "),
                e.version,
                e.hashes
                    .first()
                    .map(|h| format!(" hash {}", hex(h)))
                    .unwrap_or_default()
            ));
        };
        let failed = m.checked_flags & !m.passed_flags;
        if failed != 0 && invalid.is_none() {
            invalid = Some(Comparison::Invalid {
                message: format!(
                    "{name} version {} is installed but failed the device's checks {failed:#04x} (checked {:#04x}, passed {:#04x})",
                    m.version, m.checked_flags, m.passed_flags
                ),
                unmet_dependency: failed & DEPENDENCY_CHECKS != 0,
            });
        }
    }
    invalid.unwrap_or(Comparison::OnTarget)
}

/// `Ok` when the device's report shows every expected module running (listed, matching and
/// valid); otherwise one sentence naming the first module that is not.
pub fn verify(
    expected: &[ExpectedModule],
    hello: Option<&Hello>,
    describe: &SystemDescribe,
) -> Result<(), String> {
    match compare(expected, hello, describe) {
        Comparison::OnTarget => Ok(()),
        Comparison::Invalid { message, .. } | Comparison::Differs(message) => Err(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::message::FirmwareModule;
    use protocol::module::ModuleBuilder;

    fn app(version: u16, body: u8) -> Vec<u8> {
        ModuleBuilder::new(ModuleFunction::UserPart, 13)
            .index(2)
            .version(6)
            .start_address(0xB4000)
            .product(13, version)
            .body(vec![body; 300])
            .build()
            .unwrap()
    }

    fn user_part(hash: Option<[u8; 32]>) -> FirmwareModule {
        FirmwareModule {
            r#type: 5,
            index: 2,
            version: 6,
            hash: hash.map(|h| h.to_vec()),
            ..Default::default()
        }
    }

    #[test]
    fn user_part_matches_by_hash() {
        let file = app(4, 0xAA);
        let expected = expected_modules(&file).unwrap();
        let sha = Module::parse(&file).unwrap().sha256();
        let describe = SystemDescribe {
            firmware_modules: vec![user_part(Some(sha))],
            ..Default::default()
        };
        assert_eq!(verify(&expected, None, &describe), Ok(()));
        let old = SystemDescribe {
            firmware_modules: vec![user_part(Some([1; 32]))],
            ..Default::default()
        };
        let err = verify(&expected, None, &old).unwrap_err();
        assert!(err.starts_with("the device reports user part 2 as version 6 hash 0101"));
    }

    #[test]
    fn missing_module_is_named() {
        let expected = expected_modules(&app(4, 1)).unwrap();
        assert_eq!(
            verify(&expected, None, &SystemDescribe::default()),
            Err("the device's describe lists no user part 2".into())
        );
    }

    #[test]
    fn an_installed_module_that_fails_its_dependency_check_is_not_on_target() {
        let file = app(4, 0xAA);
        let expected = expected_modules(&file).unwrap();
        let sha = Module::parse(&file).unwrap().sha256();
        let mut module = user_part(Some(sha));
        module.checked_flags = 0x1e;
        module.passed_flags = 0x1a;
        let describe = SystemDescribe {
            firmware_modules: vec![module],
            ..Default::default()
        };
        match compare(&expected, None, &describe) {
            Comparison::Invalid {
                unmet_dependency, ..
            } => assert!(unmet_dependency),
            other => panic!("{other:?}"),
        }
        assert!(verify(&expected, None, &describe).is_err());
    }

    #[test]
    fn arbitrary_bytes_are_not_modules() {
        assert_eq!(expected_modules(&[0u8; 100]), None);
    }
}
