//! The JSON objects of the API, with the field names and types of reference
//! `particle-cloud-api.md` 2.2 (firmware) and 2.4 (devices). Fields Particle has and this cloud
//! cannot know (owner, name, notes, functions, variables...) are given their empty value;
//! `registered` and `last_reset` are ours.

use std::time::Duration;

use serde_json::{json, Value};

use super::super::fleet::{Product, ProductFirmware};
use super::super::{iso8601_millis, safe_mode, Cloud, DeviceId};
use crate::scenario::DeviceOsVersion;

/// Platforms with a cellular modem (the `cellular` field).
const CELLULAR: [u16; 6] = [13, 23, 25, 26, 28, 35];

/// A Device OS module version as Particle shows it (`6200` is `"6.2.0"`); a number that has
/// no such form (a pre-release build) is shown as the number.
fn device_os_text(version: u16) -> String {
    let dotted = DeviceOsVersion(version).to_string();
    if DeviceOsVersion::parse(&dotted) == Some(DeviceOsVersion(version)) {
        dotted
    } else {
        version.to_string()
    }
}

/// ISO-8601 of a Unix time.
pub fn iso(unix: Duration) -> String {
    iso8601_millis(unix.as_millis() as u64)
}

/// A device as `GET /v1/devices/:id` shows it; product fields when it is in a product.
pub fn device(cloud: &Cloud, id: DeviceId) -> Value {
    let view = cloud.device(id.0);
    let fleet = cloud.fleet();
    let product = fleet.product_of(id).and_then(|p| fleet.product(p));
    let hello = view.as_ref().and_then(|v| v.hello.as_ref());
    let platform_id = hello
        .map(|h| h.platform_id)
        .or(product.map(|p| p.platform_id));
    let online = view.as_ref().is_some_and(|v| v.online);
    let times = cloud.device_times(id);
    let safe_mode = view
        .as_ref()
        .and_then(|v| v.system_describe.as_ref())
        .is_some_and(safe_mode::shows_failed_checks);
    let mut object = json!({
        "id": id.to_hex(),
        "name": id.to_hex(),
        "owner": null,
        "last_app": "",
        "last_ip_address": view.as_ref().and_then(|v| v.address).map(|a| a.ip().to_string()),
        "last_heard": times.map(|t| iso(t.1)),
        "last_handshake_at": times.map(|t| iso(t.0)),
        "online": online,
        "connected": online,
        "platform_id": platform_id,
        "cellular": platform_id.is_some_and(|p| CELLULAR.contains(&p)),
        "product_id": product.map(|p| p.id).or(platform_id.map(u32::from)),
        "notes": null,
        "functions": [],
        "variables": {},
        "status": if safe_mode { "safe_mode" } else { "normal" },
        "system_firmware_version": hello.map(|h| device_os_text(h.system_version)),
        "firmware_updates_enabled": view.as_ref().and_then(|v| v.updates_enabled),
        "firmware_updates_forced": view.as_ref().is_some_and(|v| v.updates_forced_setting),
        "registered": view.is_some(),
        "last_reset": view.as_ref().and_then(|v| v.last_reset.clone()),
    });
    if let (Some(p), Some(settings), Value::Object(map)) = (product, fleet.device(id), &mut object)
    {
        let version = hello.map(|h| {
            if h.product_version == 0xFFFF {
                0
            } else {
                h.product_version
            }
        });
        let target = fleet.target(id);
        map.insert(
            "firmware_product_id".into(),
            json!(hello.map(|h| h.product_id)),
        );
        map.insert("firmware_version".into(), json!(version));
        map.insert("groups".into(), json!(settings.groups));
        map.insert("desired_firmware_version".into(), json!(settings.locked));
        map.insert(
            "targeted_firmware_release_version".into(),
            json!(target.firmware().map(|t| t.version)),
        );
        map.insert("development".into(), json!(settings.development));
        map.insert(
            "firmware_updates_forced".into(),
            json!(settings.updates_forced),
        );
        map.insert("quarantined".into(), json!(false));
        map.insert("denied".into(), json!(false));
        map.insert("product_id".into(), json!(p.id));
    }
    object
}

/// A product firmware version (reference 2.2's union of fields; `sha256` is ours).
pub fn firmware(cloud: &Cloud, product: &Product, f: &ProductFirmware) -> Value {
    let device_count = product
        .devices
        .keys()
        .filter(|d| {
            cloud
                .device(d.0)
                .and_then(|v| v.hello)
                .is_some_and(|h| h.product_version == f.version)
        })
        .count();
    json!({
        "_id": format!("{}-{}", product.id, f.version),
        "version": f.version,
        "title": f.title,
        "description": f.description,
        "size": f.file.len(),
        "sha256": hex::encode(f.sha256),
        "product_default": f.product_default,
        "current": f.product_default,
        "groups": f.groups,
        "intelligent": f.intelligent,
        "mandatory": false,
        "uploaded_on": iso(f.uploaded_at),
        "uploaded_at": iso(f.uploaded_at),
        "uploaded_by": {"username": "hil"},
        "released_at": f.released_at.map(iso),
        "product_id": product.id,
        "platform_id": f.platform_id,
        "device_count": device_count,
    })
}

/// A product (`POST /v1/products`, ours).
pub fn product(p: &Product) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "slug": p.name,
        "platform_id": p.platform_id,
        "device_count": p.devices.len(),
        "groups": p.groups,
    })
}

fn counts(c: &super::super::rollout::RolloutCounts) -> Value {
    json!({
        "targeted": c.admitted,
        "waiting": c.waiting,
        "in_progress": c.in_progress,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "timed_out": c.timed_out,
        "safe_mode": c.safe_mode,
        "failures": c.failed + c.timed_out + c.safe_mode,
        "withdrawn": c.withdrawn,
    })
}

/// A staged rollout (ours: Particle has no rollout API). The plan with the keys of
/// `POST /v1/products/:product/rollouts`, the state, why it paused or ended, counts in all and
/// per stage (`targeted`: admitted and not withdrawn), and every state change.
pub fn rollout(cloud: &Cloud, r: &super::super::rollout::Rollout) -> Value {
    use super::super::rollout::RolloutState;
    use crate::scenario::model::format_duration;
    let stages: Vec<Value> = r
        .stage_counts()
        .iter()
        .zip(&r.plan.stages)
        .enumerate()
        .map(|(i, (c, pct))| {
            let mut v = counts(c);
            if let Value::Object(m) = &mut v {
                m.insert("stage".into(), json!(i + 1));
                m.insert("percentage".into(), json!(pct));
            }
            v
        })
        .collect();
    json!({
        "id": r.id,
        "product_id": r.product,
        "app": r.plan.version,
        "intelligent": r.plan.intelligent,
        "stages": r.plan.stages,
        "soak": format_duration(r.plan.soak),
        "success_threshold": r.plan.success_threshold,
        "in_progress_timeout": format_duration(r.plan.in_progress_timeout),
        "abort": r.plan.abort.iter().map(|c| json!({
            "failure_type": c.failure_type.name(),
            "threshold_percentage": c.threshold_percentage,
            "min_number_of_executed_things": c.min_number_of_executed_things,
            "action": c.action.name(),
        })).collect::<Vec<_>>(),
        "state": r.state.name(),
        "stage": r.state.stage(r.plan.stages.len()),
        "reason": r.state.reason(),
        "paused_by": match &r.state {
            RolloutState::Paused { by, .. } => Some(by.name()),
            _ => None,
        },
        "started_at": iso(cloud.unix_time(r.started_at)),
        "counts": counts(&r.counts()),
        "stage_counts": stages,
        "transitions": r.transitions.iter().map(|t| json!({
            "at": iso(cloud.unix_time(t.at)),
            "event": t.kind.name(),
            "stage": t.stage,
            "by": t.by.name(),
            "reason": t.reason,
            "withdrawn": t.withdrawn,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_os_versions_read_as_particle_shows_them() {
        assert_eq!(device_os_text(6200), "6.2.0");
        assert_eq!(device_os_text(4002), "4.0.2");
        assert_eq!(device_os_text(65535), "65535");
    }
}
