//! `spark/status/safe-mode`: the cloud's report of a device that came up in safe mode, with
//! the device's modules in Device OS's legacy JSON describe (reference `particle-protocol.md`
//! 1.10 and 5.5, `particle-cloud-api.md` 4.7 and 4.8).
//!
//! # How the cloud knows (a choice: the reference says the event is cloud-generated)
//! Nothing in the Hello says "safe mode": its flags have no such bit (1.7), and its product
//! fields are no test (in safe mode the product id is still the platform id, and the product
//! version is the app's whenever the app validates). What Device OS does send is
//! - `spark/device/safemode` (empty data) at every connection, and only in safe mode (1.8
//!   step 4, 5.5): the device says so itself;
//! - the system describe, whose validity flags show why (1.10: "unmet dependency" = checked
//!   has the bit, passed lacks it).
//!
//! The cloud takes a device to be in safe mode on this connection when it published
//! `spark/device/safemode`, or when its system describe shows a module whose passed flags lack
//! one of its checked flags ([`shows_failed_checks`]). Either alone is not enough: an app
//! that fails its CRC is left out of the describe altogether (so no module fails a check, but
//! the device says safe mode), and the event alone carries no module list. The event is
//! published once per connection (each `spark/status` `online`: a full handshake or a
//! resumption, as the captures show it repeated at every reconnection in safe mode), once the
//! connection's system describe is known, and not before the point where the cloud sends
//! `particle/device/updates/pending` (1 s after the connection started): by then the device has
//! sent its connect events, so the stream shows `spark/device/safemode` and
//! `spark/device/last_reset` before it, as in the captures (4.8).

use protocol::message::{FirmwareModule, FirmwareModuleStore, SystemDescribe};

/// Whether a module of `describe` failed a check it ran (passed flags lack a checked flag).
pub fn shows_failed_checks(describe: &SystemDescribe) -> bool {
    describe
        .firmware_modules
        .iter()
        .any(|m| m.checked_flags & !m.passed_flags != 0)
}

/// The legacy describe's letter for a module function (`module_function_string`, reference
/// 1.10: `b|s|u|a|c|m|r`). UNCONFIRMED: functions outside that list (none, settings, asset)
/// are written `_`.
fn function_letter(module_type: i32) -> &'static str {
    match module_type {
        1 => "r",
        2 => "b",
        3 => "m",
        4 => "s",
        5 => "u",
        7 => "c",
        8 => "a",
        _ => "_",
    }
}

/// The legacy describe's letter for a module store (reference 1.10: `m|f|b|t`).
fn store_letter(store: i32) -> &'static str {
    match FirmwareModuleStore::try_from(store) {
        Ok(FirmwareModuleStore::FactoryModuleStore) => "f",
        Ok(FirmwareModuleStore::BackupModuleStore) => "b",
        Ok(FirmwareModuleStore::ScratchpadModuleStore) => "t",
        _ => "m",
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn module_json(m: &FirmwareModule) -> String {
    let mut out = format!(
        "{{\"s\":{},\"l\":\"{}\",\"vc\":{},\"vv\":{}",
        m.max_size,
        store_letter(m.store),
        m.checked_flags,
        m.passed_flags
    );
    if let Some(hash) = m.hash.as_ref().filter(|h| !h.is_empty()) {
        out.push_str(&format!(",\"u\":\"{}\"", hex::encode(hash)));
    }
    out.push_str(&format!(
        ",\"f\":\"{}\",\"n\":\"{}\",\"v\":{},\"d\":[",
        function_letter(m.r#type),
        m.index,
        m.version
    ));
    let deps: Vec<String> = m
        .dependencies
        .iter()
        .map(|d| {
            format!(
                "{{\"f\":\"{}\",\"n\":\"{}\",\"v\":{}}}",
                function_letter(d.r#type),
                d.index,
                d.version
            )
        })
        .collect();
    out.push_str(&deps.join(","));
    out.push_str("]}");
    out
}

/// The data of `spark/status/safe-mode`: Device OS's legacy JSON describe
/// (`{"p":..,"imei":..,"iccid":..,"cellfw":..,"m":[{"s","l","vc","vv","u","f","n","v","d"}]}`,
/// reference 1.10) built from the protobuf `describe` and the Hello's platform id. `s` is the
/// module's maximum size (its region), `n` the index as a string, `u` only for a module with a
/// hash (the user part); `imei`, `iccid`, `cellfw` only when the describe has them.
pub fn legacy_describe_json(platform_id: Option<u16>, describe: &SystemDescribe) -> String {
    let mut fields = Vec::new();
    if let Some(p) = platform_id {
        fields.push(format!("\"p\":{p}"));
    }
    for (key, value) in [
        ("imei", &describe.imei),
        ("iccid", &describe.iccid),
        ("cellfw", &describe.modem_firmware_version),
    ] {
        if let Some(v) = value {
            fields.push(format!("\"{key}\":{}", json_string(v)));
        }
    }
    let modules: Vec<String> = describe.firmware_modules.iter().map(module_json).collect();
    fields.push(format!("\"m\":[{}]", modules.join(",")));
    format!("{{{}}}", fields.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::message::FirmwareModuleDependency;

    #[test]
    fn the_json_has_the_legacy_keys_and_is_valid_json() {
        let describe = SystemDescribe {
            firmware_modules: vec![FirmwareModule {
                r#type: 5,
                index: 1,
                version: 6,
                store: 0,
                max_size: 262_144,
                checked_flags: 0x1e,
                passed_flags: 0x1a,
                hash: Some(vec![0xab; 32]),
                dependencies: vec![FirmwareModuleDependency {
                    r#type: 4,
                    index: 1,
                    version: 6200,
                }],
                ..Default::default()
            }],
            imei: Some("35\"1".into()),
            ..Default::default()
        };
        let text = legacy_describe_json(Some(13), &describe);
        assert_eq!(
            text,
            format!(
                "{{\"p\":13,\"imei\":\"35\\\"1\",\"m\":[{{\"s\":262144,\"l\":\"m\",\"vc\":30,\"vv\":26,\"u\":\"{}\",\"f\":\"u\",\"n\":\"1\",\"v\":6,\"d\":[{{\"f\":\"s\",\"n\":\"1\",\"v\":6200}}]}}]}}",
                "ab".repeat(32)
            )
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["imei"], "35\"1");
        assert!(shows_failed_checks(&describe));
    }

    #[test]
    fn letters_follow_the_reference_and_unknown_ones_are_underscores() {
        let letters: Vec<&str> = (0..=10).map(function_letter).collect();
        assert_eq!(
            letters,
            vec!["_", "r", "b", "m", "s", "u", "_", "c", "a", "_", "_"]
        );
        let stores: Vec<&str> = (0..=4).map(store_letter).collect();
        assert_eq!(stores, vec!["m", "f", "b", "t", "m"]);
    }
}
