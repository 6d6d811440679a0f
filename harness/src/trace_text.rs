//! One-line, machine-independent renderings of device and cloud events for traces (virtual
//! time is added by the caller). Stable on purpose: scenario traces are snapshotted, so a
//! change here is a reviewable diff in every snapshot.

use emulator::bootloader::{AppliedModule, BootState, SafeModeReason};
use emulator::os::profile::reset_reason;
use emulator::os::trace::{DisconnectReason, FirmwareUpdateEvent, RunningVersions};
use emulator::os::{DeviceEvent, SystemEvent, UpdateStatus};
use protocol::module::ModuleFunction;

use crate::cloud::{
    CloudEvent, DisconnectReason as SessionEnd, OtaEventKind, Publisher, SessionChange,
};

fn hex(id: impl AsRef<[u8]>) -> String {
    let id = id.as_ref();
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A device event as a trace line, or `None` for events too fine-grained for a trace.
pub fn device_event(event: &DeviceEvent) -> Option<String> {
    Some(match event {
        DeviceEvent::AssetOta { assets, handled } => format!(
            "onAssetOta callback with assets [{}]{}",
            assets.join(", "),
            if *handled {
                "; assetsHandled(true)"
            } else {
                "; left unhandled"
            }
        ),
        DeviceEvent::Booted {
            reset_reason,
            applied,
            refused,
            factory_restored,
            state,
            versions,
        } => {
            let mut s = format!(
                "booted (reset reason {reset_reason}, {}): {}; {}",
                reset_reason::name(*reset_reason),
                boot_state(state),
                running(versions)
            );
            for a in applied {
                s.push_str(&format!("; applied {}", applied_module(a)));
            }
            for r in refused {
                s.push_str(&format!("; refused slot {}: {}", r.slot, r.reason));
            }
            if *factory_restored {
                s.push_str("; factory app restored");
            }
            s
        }
        DeviceEvent::SafeMode { reason } => format!("safe mode: {}", safe_mode(reason)),
        DeviceEvent::PoweredOff => "powered off".into(),
        DeviceEvent::Connecting { resume } => {
            if *resume {
                "connecting (resuming the DTLS session)".into()
            } else {
                "connecting (full DTLS handshake)".into()
            }
        }
        DeviceEvent::Connected { resumed } => format!("connected (resumed: {resumed})"),
        DeviceEvent::Disconnected { reason } => format!("disconnected: {}", disconnect(reason)),
        DeviceEvent::Published { name, data } => format!("published {name} = {data:?}"),
        DeviceEvent::Received { name, data } => format!("received {name} = {data:?}"),
        DeviceEvent::SystemEvent(e) => format!("system event {}", system_event(e)),
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
                hex(e.device_id),
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
        }) => format!(
            "session {} disconnected: {}",
            hex(device_id),
            session_end(reason)
        ),
        CloudEvent::Session(SessionChange::Refused {
            address,
            claimed_device_id,
            key_of,
            key_fingerprint,
            reason,
            ..
        }) => {
            let mut who = format!("from {address}");
            if let Some(id) = claimed_device_id {
                who.push_str(&format!(", claiming {}", hex(id)));
            }
            if let Some(id) = key_of {
                who.push_str(&format!(", with the key of {}", hex(id)));
            }
            if let Some(f) = key_fingerprint {
                who.push_str(&format!(", key {f}"));
            }
            format!("handshake refused ({who}): {reason}")
        }
        CloudEvent::Ota(e) => match &e.kind {
            OtaEventKind::Progress { .. } | OtaEventKind::Retransmitted { .. } => return None,
            kind => format!("ota {} {}: {}", e.job, hex(e.device_id), ota_kind(kind)),
        },
        CloudEvent::Dropped { device_id, reason } => format!(
            "dropped input from {}: {reason}",
            device_id.map(hex).unwrap_or_else(|| "?".into())
        ),
    })
}

fn version(v: Option<u16>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// "bootloader 3100, system part 6200, user part 6 (product version 3)".
fn running(v: &RunningVersions) -> String {
    let user = match (v.user_part, v.product_version) {
        (Some(u), Some(p)) => format!("user part {u} (product version {p})"),
        (Some(u), None) => format!("user part {u}"),
        (None, _) => "no user part".to_string(),
    };
    format!(
        "bootloader {}, system part {}, {user}",
        version(v.bootloader),
        version(v.system_part)
    )
}

/// "user part 2 v6" (compressed noted).
fn applied_module(a: &AppliedModule) -> String {
    format!(
        "{} {} v{}{}",
        ModuleFunction::from(a.function),
        a.index,
        a.version,
        if a.compressed { " (compressed)" } else { "" }
    )
}

fn boot_state(state: &BootState) -> String {
    match state {
        BootState::Running => "running".to_string(),
        BootState::SafeMode(reason) => format!("safe mode ({})", safe_mode(reason)),
        BootState::Unbootable { region, problem } => format!("unbootable: {region}: {problem}"),
    }
}

fn safe_mode(reason: &SafeModeReason) -> String {
    let needs = |function: u8, index: u8, needed: u16, installed: Option<u16>| {
        format!(
            "needs {} {index} version {needed}, installed {}",
            ModuleFunction::from(function),
            version(installed)
        )
    };
    match reason {
        SafeModeReason::SystemDependencyUnmet {
            region,
            function,
            index,
            needed,
            installed,
        } => format!(
            "the {region} {}",
            needs(*function, *index, *needed, *installed)
        ),
        SafeModeReason::UserPartDependencyUnmet {
            function,
            index,
            needed,
            installed,
        } => format!(
            "the user part {}",
            needs(*function, *index, *needed, *installed)
        ),
        SafeModeReason::UserPartInvalid => {
            "no valid user part and no valid factory app".to_string()
        }
        SafeModeReason::UserPartWrongPlatform { found } => {
            format!("the user part is built for platform {found}")
        }
        SafeModeReason::AssetsMissing { names } => {
            format!(
                "the application needs assets not in storage: {}",
                names.join(", ")
            )
        }
    }
}

fn disconnect(reason: &DisconnectReason) -> String {
    let goodbye = |sent: bool| if sent { "goodbye sent" } else { "no goodbye" };
    match reason {
        DisconnectReason::Reset {
            reset_reason: r,
            goodbye: g,
        } => format!(
            "reset (reason {r}, {}), {}",
            reset_reason::name(*r),
            goodbye(*g)
        ),
        DisconnectReason::Sleep { goodbye: g } => format!("sleep, {}", goodbye(*g)),
        DisconnectReason::PowerLost => "power lost".to_string(),
        DisconnectReason::Requested => "Particle.disconnect()".to_string(),
        DisconnectReason::HandshakeFailed { error } => format!("handshake failed: {error}"),
        DisconnectReason::PingTimeout => "no answer to a ping for 30 s".to_string(),
        DisconnectReason::MessageTimeout => {
            "a confirmable message was never acknowledged".to_string()
        }
        DisconnectReason::ResetByServer => "the server answered with RST".to_string(),
        DisconnectReason::SessionDiscarded => "the session was discarded".to_string(),
        DisconnectReason::TransferTimeout => "no chunk for 300 s during a transfer".to_string(),
        DisconnectReason::OtaError { code } => format!("OTA error {code}"),
        DisconnectReason::Dtls { error } => format!("DTLS: {error}"),
    }
}

fn system_event(e: &SystemEvent) -> String {
    match e {
        SystemEvent::FirmwareUpdate(u) => format!(
            "firmware_update {}",
            match u {
                FirmwareUpdateEvent::Begin => "begin",
                FirmwareUpdateEvent::Progress => "progress",
                FirmwareUpdateEvent::Complete => "complete",
                FirmwareUpdateEvent::Failed => "failed",
            }
        ),
        SystemEvent::FirmwareUpdatePending => "firmware_update_pending".to_string(),
        SystemEvent::FirmwareUpdateStatus(s) => format!(
            "firmware_update_status {} ({})",
            s.code(),
            match s {
                UpdateStatus::Unknown => "unknown",
                UpdateStatus::NotAvailable => "not available",
                UpdateStatus::Pending => "pending",
                UpdateStatus::InProgress => "in progress",
            }
        ),
        SystemEvent::ResetPending => "reset_pending".to_string(),
        SystemEvent::Reset => "reset".to_string(),
    }
}

fn session_end(reason: &SessionEnd) -> String {
    match reason {
        SessionEnd::Goodbye {
            cloud_reason,
            reset_reason: r,
        } => {
            let mut parts = Vec::new();
            if let Some(c) = cloud_reason {
                parts.push(format!("cloud reason {c}"));
            }
            if let Some(r) = r {
                parts.push(format!("reset reason {r} ({})", reset_reason::name(*r)));
            }
            if parts.is_empty() {
                "goodbye".to_string()
            } else {
                format!("goodbye ({})", parts.join(", "))
            }
        }
        SessionEnd::Silent => "silent for the idle timeout".to_string(),
        SessionEnd::MessageTimeout => "a confirmable message was never acknowledged".to_string(),
        SessionEnd::Replaced => "replaced by a new handshake".to_string(),
        SessionEnd::ResumedAgain => "resumed again while online".to_string(),
        SessionEnd::Closed(why) => format!("closed: {why}"),
        SessionEnd::Refused(why) => format!("refused: {why}"),
    }
}

fn ota_kind(kind: &OtaEventKind) -> String {
    match kind {
        OtaEventKind::Queued => "queued".to_string(),
        OtaEventKind::Started {
            attempt,
            file_size,
            chunk_size,
        } => format!("started (attempt {attempt}, {file_size} bytes in chunks of {chunk_size})"),
        OtaEventKind::Accepted {
            window,
            resume_offset,
            chunks,
        } => {
            format!("accepted (window {window}, resuming at byte {resume_offset}, {chunks} chunks)")
        }
        OtaEventKind::Progress {
            sent,
            acked,
            chunks,
        } => format!("{acked} of {chunks} chunks acknowledged ({sent} sent)"),
        OtaEventKind::Retransmitted { indices } => {
            format!("{} chunks sent again", indices.len())
        }
        OtaEventKind::Finishing => "every chunk acknowledged, finishing".to_string(),
        OtaEventKind::Committed { stats: None } => "committed".to_string(),
        OtaEventKind::Committed { stats: Some(s) } => format!(
            "committed (device received {} chunks, {} duplicate, {} out of order, sent {} acks)",
            s.recv_chunks, s.dup_chunks, s.ooo_chunks, s.sent_acks
        ),
        OtaEventKind::Succeeded => "succeeded".to_string(),
        OtaEventKind::Requeued { resume_hint } => {
            format!("requeued: the device left mid-transfer (resume hint byte {resume_hint})")
        }
        OtaEventKind::Held => "held: the device has updates disabled".to_string(),
        OtaEventKind::Retrying { reason } => format!("retrying: {reason}"),
        OtaEventKind::Created { what } => format!("created by the cloud: {what}"),
        OtaEventKind::Failed {
            code: Some(code),
            message,
        } => format!("failed (Device OS error {code}): {message}"),
        OtaEventKind::Failed {
            code: None,
            message,
        } => format!("failed: {message}"),
    }
}
