//! One-line, machine-independent renderings of device and cloud events for traces (virtual
//! time is added by the caller). Stable on purpose: scenario traces are snapshotted, so a
//! change here is a reviewable diff in every snapshot.

use emulator::os::{DeviceEvent, SystemEvent};

use crate::cloud::{CloudEvent, OtaEventKind, Publisher, SessionChange};

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A device event as a trace line, or `None` for events too fine-grained for a trace.
pub fn device_event(event: &DeviceEvent) -> Option<String> {
    Some(match event {
        DeviceEvent::Booted {
            reset_reason,
            applied,
            refused,
            factory_restored,
            state,
            versions,
        } => {
            let mut s = format!("booted (reset reason {reset_reason}): {state:?}, {versions:?}");
            for a in applied {
                s.push_str(&format!(
                    "; applied {}/{} v{}",
                    a.function, a.index, a.version
                ));
            }
            for r in refused {
                s.push_str(&format!("; refused slot {}: {}", r.slot, r.reason));
            }
            if *factory_restored {
                s.push_str("; factory app restored");
            }
            s
        }
        DeviceEvent::SafeMode { reason } => format!("safe mode: {reason:?}"),
        DeviceEvent::PoweredOff => "powered off".into(),
        DeviceEvent::Connecting { resume } => {
            if *resume {
                "connecting (resuming the DTLS session)".into()
            } else {
                "connecting (full DTLS handshake)".into()
            }
        }
        DeviceEvent::Connected { resumed } => format!("connected (resumed: {resumed})"),
        DeviceEvent::Disconnected { reason } => format!("disconnected: {reason:?}"),
        DeviceEvent::Published { name, data } => format!("published {name} = {data:?}"),
        DeviceEvent::Received { name, data } => format!("received {name} = {data:?}"),
        DeviceEvent::SystemEvent(SystemEvent::FirmwareUpdate(e)) => {
            format!("system event firmware_update {e:?}")
        }
        DeviceEvent::SystemEvent(e) => format!("system event {e:?}"),
        DeviceEvent::OtaStarted {
            file_size,
            resume_offset,
        } => format!("ota started: {file_size} bytes, resuming at {resume_offset}"),
        DeviceEvent::OtaProgress {
            received,
            file_size,
        } => {
            format!("ota progress {received}/{file_size}")
        }
        DeviceEvent::OtaFailed { code, message } => format!("ota failed {code}: {message}"),
        DeviceEvent::Sleeping {
            duration,
            network_kept,
        } => match duration {
            Some(d) => format!("sleeping {} s (network kept: {network_kept})", d.as_secs()),
            None => format!("sleeping until woken (network kept: {network_kept})"),
        },
        DeviceEvent::Woke => "woke".into(),
        DeviceEvent::Log(text) => format!("log: {text}"),
    })
}

/// A cloud event as a trace line, or `None` for per-ack progress (too many to read).
pub fn cloud_event(event: &CloudEvent) -> Option<String> {
    Some(match event {
        CloudEvent::Stream(e) => {
            let by = match e.publisher {
                Publisher::Device => "device",
                Publisher::Cloud => "cloud",
            };
            format!(
                "stream {} {} = {:?} (by {by})",
                hex(&e.device_id),
                e.name,
                e.data
            )
        }
        CloudEvent::Session(SessionChange::Connected { device_id, .. }) => {
            format!("session {} connected", hex(device_id))
        }
        CloudEvent::Session(SessionChange::Resumed { device_id, .. }) => {
            format!("session {} resumed", hex(device_id))
        }
        CloudEvent::Session(SessionChange::Moved { device_id, .. }) => {
            format!("session {} moved to a new address", hex(device_id))
        }
        CloudEvent::Session(SessionChange::Disconnected {
            device_id, reason, ..
        }) => format!("session {} disconnected: {reason:?}", hex(device_id)),
        CloudEvent::Ota(e) => match &e.kind {
            OtaEventKind::Progress { .. } | OtaEventKind::Retransmitted { .. } => return None,
            kind => format!("ota job {:?} {}: {kind:?}", e.job, hex(&e.device_id)),
        },
        CloudEvent::Dropped { device_id, reason } => format!(
            "dropped input from {}: {reason}",
            device_id.map(|d| hex(&d)).unwrap_or_else(|| "?".into())
        ),
    })
}
