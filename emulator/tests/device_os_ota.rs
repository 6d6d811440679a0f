//! OTA v3 on the wire, end to end through the emulated Device OS (reference 2.2-2.5, 3): the
//! responses compared with the captured 6.2.0 session (empty ACK then a separate 2.01 with
//! Window-Size, UpdateAcks with cumulative index and bitmap, a separate 2.04 with the JSON
//! stats), the commit on the cloud's ACK, the reset, the new version in Hello and describe, and
//! what the system flags, sleep, resets and disconnects do to a transfer.
//!
//! After its post-update reset the captured device made a full DTLS handshake: the host build
//! keeps the session in process memory, which its reset (a process restart) loses. A Gen3
//! device keeps it in retained RAM and resumes (reference 1.4); because the firmware changed,
//! it then sends a Hello and its describes again, which is what these tests expect.

mod device_os_support;

use std::time::Duration;

use device_os_support::*;
use emulator::board::{Board, RegionKind};
use emulator::firmware::{FirmwareSet, Versions};
use emulator::os::{AppBehaviour, DeviceEvent, DisconnectReason, FirmwareUpdateEvent, SystemEvent};
use protocol::coap::{option, Code, MessageType};
use protocol::message::{Body, Diagnostic, Hello, SystemDescribe};

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

/// The application v4 as a 5000-byte module: five 1024-byte chunks, the last one 904 bytes,
/// like the capture's file.
fn capture_sized_app() -> Vec<u8> {
    let b = Board::builtin("boron").unwrap();
    FirmwareSet::new(&b, small_sizes(), 11)
        .module(RegionKind::UserPart, &v4(), 5000)
        .unwrap()
}

fn ota_messages(sim: &Sim) -> Vec<&Seen> {
    sim.cloud
        .seen
        .iter()
        .filter(|s| {
            matches!(
                s.particle().map(|p| p.body),
                Some(
                    Body::UpdateStart(_)
                        | Body::UpdateChunk(_)
                        | Body::UpdateAck(_)
                        | Body::UpdateFinish(_)
                        | Body::Response(_)
                        | Body::EmptyAck
                )
            )
        })
        .collect()
}

#[test]
fn the_captured_transfer_gets_the_captured_answers() {
    let mut sim = Sim::boron();
    sim.connect();
    sim.run_for(SECOND);
    let file = capture_sized_app();
    assert_eq!(file.len(), 5000);
    let first_ota = sim.cloud.seen.len();
    // UpdateStart, 1 s later the chunks in the capture's order 1, 2, 4, 3, 5, 1.5 s later
    // UpdateFinish.
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 1024));
    sim.run_for(SECOND);
    let response = sim.cloud_response(start).expect("2.01");
    assert_eq!(
        response.kind,
        MessageType::Confirmable,
        "a separate response"
    );
    assert_eq!(response.code, Code::CREATED);
    let options: Vec<(u16, Vec<u8>)> = response
        .options
        .iter()
        .map(|o| (o.number, o.value.clone()))
        .collect();
    // Window-Size 128 chunks of 1024, File-Size (resume offset) 0 as an empty option.
    assert_eq!(options, vec![(2053, vec![0x80]), (2057, vec![])]);
    for index in [1, 2, 4, 3, 5] {
        sim.cloud_request(
            MessageType::NonConfirmable,
            update_chunk(&file, 1024, 0, index),
        );
    }
    sim.run_for(1500 * MS);
    assert_eq!(
        sim.update_acks(),
        vec![(1, vec![]), (2, vec![0b10]), (4, vec![]), (5, vec![])]
    );
    let finish = sim.cloud_request(MessageType::Confirmable, update_finish());
    sim.run_for(100 * MS);
    let stats = sim.cloud_response(finish).expect("2.04");
    assert_eq!(stats.kind, MessageType::Confirmable);
    assert_eq!(stats.code, Code::CHANGED);
    let captured = jsonl("coap.jsonl")
        .into_iter()
        .find(|m| m["label"] == "CON 2.04 separate response (to UpdateFinish) with JSON stats")
        .unwrap();
    assert_eq!(
        stats.payload,
        hex::decode(captured["payload_hex"].as_str().unwrap()).unwrap(),
        "{}",
        String::from_utf8_lossy(&stats.payload)
    );
    // The shape of the whole exchange, message for message: the capture's records 31..47
    // (the device then resets and reconnects; that part is compared elsewhere).
    let ours: Vec<String> = ota_messages(&sim)
        .into_iter()
        .filter(|s| {
            sim.cloud.seen[first_ota..]
                .iter()
                .any(|x| std::ptr::eq(x, *s))
        })
        .map(|s| {
            let dir = match s.dir {
                Dir::DeviceToCloud => "D",
                Dir::CloudToDevice => "C",
            };
            let opts: Vec<u16> = s
                .message
                .options
                .iter()
                .map(|o| o.number)
                .filter(|n| *n != option::FILE_SHA256)
                .collect();
            format!("{dir} {} {} {opts:?}", s.message.kind, s.message.code)
        })
        .collect();
    let expected: Vec<String> = jsonl("coap.jsonl")
        .into_iter()
        .filter(|m| m["session"] == 1 && (31..=47).contains(&m["record"].as_u64().unwrap()))
        .map(|m| {
            let dir = if m["dir"] == "device_to_cloud" {
                "D"
            } else {
                "C"
            };
            let opts: Vec<u16> = m["options"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o[0].as_u64().unwrap() as u16)
                .filter(|n| *n != option::FILE_SHA256)
                .collect();
            format!(
                "{dir} {} {} {opts:?}",
                m["type"].as_str().unwrap(),
                m["code"].as_str().unwrap()
            )
        })
        .collect();
    // Our cloud's chunks and the device's acks interleave differently in time (the capture
    // records the device's acks after all five chunks); compare each direction in order.
    let split = |v: &[String], d: &str| -> Vec<String> {
        v.iter().filter(|s| s.starts_with(d)).cloned().collect()
    };
    let (ours_d, expected_d) = (split(&ours, "D"), split(&expected, "D"));
    let (ours_c, expected_c) = (split(&ours, "C"), split(&expected, "C"));
    assert_eq!(ours_d[..expected_d.len()], expected_d[..]);
    assert_eq!(ours_c[..expected_c.len()], expected_c[..]);
}

#[test]
fn the_update_commits_on_the_ack_of_the_2_04_then_resets_and_reports_the_new_version() {
    let mut sim = Sim::boron();
    sim.connect();
    let file = app_module("boron", &v4());
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 512));
    sim.run_for(100 * MS);
    assert!(sim.cloud_response(start).is_some());
    for index in 1..=(file.len() as u32).div_ceil(512) {
        sim.cloud_request(
            MessageType::NonConfirmable,
            update_chunk(&file, 512, 0, index),
        );
    }
    sim.run_for(SECOND);
    // The cloud's ACK of the 2.04 is lost: nothing is committed, the 2.04 is retransmitted.
    let finish = sim.cloud_request(MessageType::Confirmable, update_finish());
    while sim.cloud_response(finish).is_none() {
        assert!(sim.step(sim.now + SECOND));
    }
    sim.drop_to_device = true;
    sim.run_for(3 * SECOND);
    assert!(sim.device.device_mut().pending_slots().unwrap().is_empty());
    let status = sim.device.status();
    assert!(!status.flags.reset_pending);
    assert!(status.ota.is_some_and(|o| o.validated));
    assert_eq!(status.versions.product_version, Some(3));
    // The retransmitted 2.04 gets its ACK: commit, reset_pending, reset.
    let from = sim.trace.len();
    let messages = sim.cloud.sent_by_device().len();
    sim.drop_to_device = false;
    assert!(sim.run_until(20 * SECOND, |e| *e
        == DeviceEvent::Connected { resumed: true }));
    let trace = sim.trace_since(from);
    let position = |wanted: &DeviceEvent| trace.iter().position(|e| e == wanted).unwrap();
    let complete = position(&DeviceEvent::SystemEvent(SystemEvent::FirmwareUpdate(
        FirmwareUpdateEvent::Complete,
    )));
    let pending = position(&DeviceEvent::SystemEvent(SystemEvent::ResetPending));
    let reset = position(&DeviceEvent::SystemEvent(SystemEvent::Reset));
    let disconnected = position(&DeviceEvent::Disconnected {
        reason: DisconnectReason::Reset {
            reset_reason: 70,
            goodbye: false,
        },
    });
    assert!(complete < pending && pending < reset && reset < disconnected);
    let booted = trace
        .iter()
        .find_map(|e| match e {
            DeviceEvent::Booted {
                reset_reason,
                applied,
                versions,
                ..
            } => Some((*reset_reason, applied.len(), *versions)),
            _ => None,
        })
        .unwrap();
    assert_eq!((booted.0, booted.1), (70, 1));
    assert_eq!(booted.2.product_version, Some(4));
    // Next connection (a resumption whose state changed): Hello with the new version, the
    // describe with the new module, last_reset "update".
    let sent = &sim.cloud.sent_by_device()[messages..];
    let hello = sent
        .iter()
        .find_map(|s| match s.particle()?.body {
            Body::Hello(h) => Some(h),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        hello,
        Hello {
            product_version: 4,
            ..hello.clone()
        }
    );
    assert_eq!(hello.product_version, 4);
    let describe = sent
        .iter()
        .find(|s| s.message.option(option::URI_QUERY) == Some(&[1][..]))
        .unwrap();
    let d = SystemDescribe::parse(&describe.message.payload).unwrap();
    let user = d.firmware_modules.iter().find(|m| m.r#type == 5).unwrap();
    assert_eq!(user.version, 7);
    assert!(sent
        .iter()
        .any(|s| s.event() == Some(("spark/device/last_reset".into(), "update".into()))));
    // No Goodbye by default (Device OS resets without one, as in the capture).
    assert!(!sent
        .iter()
        .any(|s| matches!(s.particle().map(|p| p.body), Some(Body::Goodbye(_)))));
}

#[test]
fn a_graceful_update_reset_says_goodbye_with_reason_5_and_reset_reason_update() {
    let app = AppBehaviour {
        graceful_disconnect: true,
        ..AppBehaviour::default()
    };
    let mut sim = Sim::new("boron", &Versions::BASELINE, app, 5);
    sim.connect();
    sim.transfer(&app_module("boron", &v4()), 512);
    sim.run_for(10 * SECOND);
    assert!(sim.trace.iter().any(|(_, e)| matches!(
        e,
        DeviceEvent::Booted {
            reset_reason: 70,
            ..
        }
    )));
    let goodbye = sim
        .cloud
        .sent_by_device()
        .iter()
        .find_map(|s| match s.particle()?.body {
            Body::Goodbye(g) => Some(g),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (goodbye.cloud_reason, goodbye.reset_reason),
        (Some(5), Some(70))
    );
}

#[test]
fn updates_disabled_refuse_update_start_with_1380_and_forced_updates_are_accepted() {
    let mut sim = Sim::boron();
    sim.connect();
    let now = sim.now;
    sim.device.disable_updates(now);
    sim.run_for(SECOND);
    let file = app_module("boron", &v4());
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 512));
    sim.run_for(SECOND);
    let refused = sim.cloud_response(start).unwrap();
    // Empty ACK first, then a separate CON 5.03 with the diagnostic.
    assert_eq!(refused.kind, MessageType::Confirmable);
    assert_eq!(refused.code, Code::SERVICE_UNAVAILABLE);
    assert_eq!(Diagnostic::parse(&refused.payload).unwrap().code, -1380);
    assert!(
        sim.device.status().connected,
        "the ACK of this error changes nothing"
    );
    let now = sim.now;
    sim.cloud
        .send_event(now, "particle/device/updates/forced", "true");
    sim.run_for(SECOND);
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 512));
    sim.run_for(SECOND);
    assert_eq!(sim.cloud_response(start).unwrap().code, Code::CREATED);
    assert!(sim.device.status().ota.is_some());
}

#[test]
fn invalid_update_start_options_get_a_piggybacked_error_ack() {
    let mut sim = Sim::boron();
    sim.connect();
    let file = app_module("boron", &v4());
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 500));
    sim.run_for(SECOND);
    let answer = sim.cloud_response(start).unwrap();
    assert_eq!(answer.kind, MessageType::Acknowledgement, "piggy-backed");
    assert_eq!(Diagnostic::parse(&answer.payload).unwrap().code, -240);
    assert!(sim.device.status().ota.is_none());
}

#[test]
fn a_transfer_goes_on_when_the_application_disables_updates_mid_transfer() {
    let mut sim = Sim::boron();
    sim.connect();
    let file = app_module("boron", &v4());
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 512));
    sim.run_for(100 * MS);
    assert!(sim.cloud_response(start).is_some());
    let now = sim.now;
    sim.device.disable_updates(now);
    for index in 1..=(file.len() as u32).div_ceil(512) {
        sim.cloud_request(
            MessageType::NonConfirmable,
            update_chunk(&file, 512, 0, index),
        );
    }
    sim.run_for(SECOND);
    sim.cloud_request(MessageType::Confirmable, update_finish());
    assert!(sim.run_until(5 * SECOND, |e| matches!(
        e,
        DeviceEvent::Booted {
            reset_reason: 70,
            ..
        }
    )));
    assert_eq!(sim.device.status().versions.product_version, Some(4));
}

#[test]
fn with_resets_disabled_the_update_waits_for_enable_reset() {
    let app = AppBehaviour {
        reset_enabled_at_boot: false,
        ..AppBehaviour::default()
    };
    let mut sim = Sim::new("boron", &Versions::BASELINE, app, 5);
    sim.connect();
    sim.transfer(&app_module("boron", &v4()), 512);
    sim.run_for(10 * SECOND);
    let status = sim.device.status();
    assert!(status.flags.reset_pending);
    assert!(status.connected);
    assert_eq!(status.versions.product_version, Some(3));
    assert_eq!(sim.device.device_mut().pending_slots().unwrap().len(), 1);
    let now = sim.now;
    sim.device.enable_reset(now);
    assert!(sim.run_until(5 * SECOND, |e| matches!(
        e,
        DeviceEvent::Booted {
            reset_reason: 70,
            ..
        }
    )));
    assert_eq!(sim.device.status().versions.product_version, Some(4));
}

#[test]
fn a_power_cut_while_the_reset_is_deferred_still_applies_the_update() {
    let app = AppBehaviour {
        reset_enabled_at_boot: false,
        ..AppBehaviour::default()
    };
    let mut sim = Sim::new("boron", &Versions::BASELINE, app, 5);
    sim.connect();
    sim.transfer(&app_module("boron", &v4()), 512);
    sim.run_for(SECOND);
    assert!(sim.device.status().flags.reset_pending);
    let now = sim.now;
    sim.device.power_cut(now);
    sim.run_for(SECOND);
    sim.connect();
    let status = sim.device.status();
    assert_eq!(status.versions.product_version, Some(4));
    assert!(!status.flags.reset_pending, "flags are RAM");
    assert!(sim
        .cloud
        .published()
        .contains(&("spark/device/last_reset".into(), "power_down".into())));
}

#[test]
fn sleep_cancels_a_running_transfer_which_resumes_after_waking() {
    let mut sim = Sim::boron();
    sim.connect();
    let file = app_module("boron", &v4());
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 512));
    sim.run_for(100 * MS);
    assert!(sim.cloud_response(start).is_some());
    for index in 1..=6 {
        sim.cloud_request(
            MessageType::NonConfirmable,
            update_chunk(&file, 512, 0, index),
        );
    }
    sim.run_for(SECOND);
    let now = sim.now;
    sim.device
        .sleep(now, sleep_for(Duration::from_secs(60), false))
        .unwrap();
    sim.run_for(MS);
    assert!(sim.device.status().ota.is_none());
    assert!(sim.trace.iter().any(|(_, e)| *e
        == DeviceEvent::SystemEvent(SystemEvent::FirmwareUpdate(FirmwareUpdateEvent::Failed))));
    assert!(sim.run_until(90 * SECOND, |e| *e
        == DeviceEvent::Connected { resumed: true }));
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 512));
    sim.run_for(SECOND);
    let response = sim.cloud_response(start).unwrap();
    let offset = protocol::coap::decode_uint(response.option(option::FILE_SIZE).unwrap()).unwrap();
    assert_eq!(offset, 6 * 512, "the cancel synced the resume state");
    assert!(sim.trace.iter().any(|(_, e)| *e
        == DeviceEvent::OtaStarted {
            file_size: file.len() as u32,
            resume_offset: 6 * 512
        }));
}

#[test]
fn no_pings_while_a_transfer_runs_and_the_transfer_times_out_after_300_seconds() {
    let mut sim = Sim::new("argon", &Versions::BASELINE, AppBehaviour::default(), 5);
    sim.connect();
    let file = app_module("argon", &v4());
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 512));
    sim.run_for(100 * MS);
    assert!(sim.cloud_response(start).is_some());
    let pings_before = sim
        .cloud
        .sent_by_device()
        .iter()
        .filter(|s| s.message.code == Code::EMPTY && s.message.kind == MessageType::Confirmable)
        .count();
    assert!(sim.run_until(310 * SECOND, |e| matches!(
        e,
        DeviceEvent::Disconnected {
            reason: DisconnectReason::TransferTimeout
        }
    )));
    let pings_after = sim
        .cloud
        .sent_by_device()
        .iter()
        .filter(|s| s.message.code == Code::EMPTY && s.message.kind == MessageType::Confirmable)
        .count();
    assert_eq!(
        pings_before, pings_after,
        "an Argon pings every 25 s, not during a transfer"
    );
    // Reconnects at once, resuming the session.
    assert!(sim.run_until(5 * SECOND, |e| *e
        == DeviceEvent::Connected { resumed: true }));
}

#[test]
fn a_chunk_without_a_transfer_gets_an_rst_and_nothing_else() {
    let mut sim = Sim::boron();
    sim.connect();
    let file = app_module("boron", &v4());
    sim.cloud_request(MessageType::NonConfirmable, update_chunk(&file, 512, 0, 1));
    sim.run_for(SECOND);
    let last = sim.cloud.sent_by_device().last().unwrap().message.clone();
    assert_eq!(last.kind, MessageType::Reset);
    assert!(sim.device.status().connected);
}

#[test]
fn a_bad_chunk_gets_an_rst_and_the_device_reconnects() {
    let mut sim = Sim::boron();
    sim.connect();
    let file = app_module("boron", &v4());
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 512));
    sim.run_for(100 * MS);
    assert!(sim.cloud_response(start).is_some());
    // Index beyond the chunk count.
    sim.cloud_request(MessageType::NonConfirmable, update_chunk(&file, 512, 0, 1));
    sim.cloud_request(
        MessageType::NonConfirmable,
        Body::UpdateChunk(protocol::message::UpdateChunk {
            index: 999,
            data: vec![0; 512],
        }),
    );
    let ok = sim.run_until(SECOND, |e| {
        matches!(
            e,
            DeviceEvent::Disconnected {
                reason: DisconnectReason::OtaError { code: -240 }
            }
        )
    });
    assert!(ok, "{:#?}", sim.trace);
    // The RST is still on its way.
    sim.run_for(10 * MS);
    assert!(sim
        .cloud
        .sent_by_device()
        .iter()
        .any(|s| s.message.kind == MessageType::Reset));
    sim.run_for(SECOND);
    assert!(sim.device.status().connected);
    assert!(sim
        .trace
        .iter()
        .any(|(_, e)| *e == DeviceEvent::Connecting { resume: true }));
}

#[test]
fn a_module_for_another_platform_is_refused_with_1360_and_the_old_app_keeps_running() {
    let mut sim = Sim::boron();
    sim.connect();
    let argon_app = app_module("argon", &v4());
    let finish = sim.transfer(&argon_app, 512);
    let refused = sim.cloud_response(finish).unwrap();
    assert_eq!(refused.kind, MessageType::Confirmable);
    assert_eq!(Diagnostic::parse(&refused.payload).unwrap().code, -1360);
    // The cloud ACKed the error: the device cancels and reconnects.
    sim.run_for(5 * SECOND);
    let trace = sim.trace_since(0);
    let disconnected = trace
        .iter()
        .position(|e| {
            *e == DeviceEvent::Disconnected {
                reason: DisconnectReason::OtaError { code: -1360 },
            }
        })
        .expect("disconnected");
    assert!(trace[disconnected..]
        .iter()
        .any(|e| matches!(e, DeviceEvent::Connected { .. })));
    assert_eq!(sim.device.status().versions.product_version, Some(3));
    assert!(sim.device.device_mut().pending_slots().unwrap().is_empty());
}

#[test]
fn single_threaded_application_calls_wait_for_the_end_of_the_transfer() {
    let app = AppBehaviour {
        system_thread: false,
        ..AppBehaviour::default()
    };
    let mut sim = Sim::new("boron", &Versions::BASELINE, app, 5);
    sim.connect();
    // Non-threaded AUTOMATIC: setup(), and so loop(), runs only a while after the connection.
    sim.run_for(emulator::os::profile::NON_THREADED_SETUP_DELAY + SECOND);
    let file = app_module("boron", &v4());
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 512));
    sim.run_for(100 * MS);
    assert!(sim.cloud_response(start).is_some());
    let now = sim.now;
    sim.device.disable_reset(now);
    assert!(
        sim.device.status().flags.reset_enabled,
        "loop() does not run"
    );
    // A cancelling UpdateFinish ends the transfer; the call takes effect.
    sim.cloud_request(
        MessageType::Confirmable,
        Body::UpdateFinish(protocol::message::UpdateFinish {
            cancel: true,
            discard_data: false,
        }),
    );
    sim.run_for(SECOND);
    assert!(sim.device.status().ota.is_none());
    assert!(!sim.device.status().flags.reset_enabled);
}

#[test]
fn a_power_cut_in_the_flash_during_the_download_turns_the_device_off_and_the_old_app_runs() {
    use emulator::flash::CutMode;
    let mut sim = Sim::boron();
    sim.connect();
    let file = app_module("boron", &v4());
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 512));
    sim.run_for(100 * MS);
    assert!(sim.cloud_response(start).is_some());
    // The power goes at the second flash operation from now: inside a chunk write.
    let at = sim.device.device().flash().op_count() + 2;
    sim.device.device_mut().schedule_cut(at, CutMode::Torn);
    for index in 1..=(file.len() as u32).div_ceil(512) {
        sim.cloud_request(
            MessageType::NonConfirmable,
            update_chunk(&file, 512, 0, index),
        );
    }
    sim.run_for(SECOND);
    assert!(!sim.device.status().powered);
    assert!(sim.trace.iter().any(|(_, e)| *e == DeviceEvent::PoweredOff));
    // Power back: the old application runs, the session is gone (full handshake).
    let from = sim.trace.len();
    sim.connect();
    assert_eq!(sim.device.status().versions.product_version, Some(3));
    assert!(sim
        .trace_since(from)
        .contains(&DeviceEvent::Connected { resumed: false }));
    // The cloud tries again and the update goes through.
    sim.transfer(&file, 512);
    sim.run_for(5 * SECOND);
    assert_eq!(sim.device.status().versions.product_version, Some(4));
}

#[test]
fn a_chunk_cut_fires_while_that_chunk_is_written_even_when_chunks_arrive_together() {
    use emulator::flash::CutMode;
    let mut sim = Sim::boron();
    sim.connect();
    let file = app_module("boron", &v4());
    let start = sim.cloud_request(MessageType::Confirmable, update_start(&file, 512));
    sim.run_for(100 * MS);
    assert!(sim.cloud_response(start).is_some());
    sim.device.cut_power_at_chunk(5, CutMode::After);
    // A duplicate of a held chunk writes nothing: the cut keeps waiting.
    for index in [1, 2, 2, 3, 4, 5, 6, 7, 8] {
        sim.cloud_request(
            MessageType::NonConfirmable,
            update_chunk(&file, 512, 0, index),
        );
    }
    sim.run_for(SECOND);
    assert!(!sim.device.status().powered);
    assert!(!sim.device.chunk_cut_pending());
    // "After": chunk 5 reached the flash, chunk 6 never did (read with the flash powered).
    sim.device.device_mut().power_on();
    let staging = sim.device.device().read_staging(0, 6 * 512).unwrap();
    assert_eq!(staging[..5 * 512], file[..5 * 512]);
    assert_ne!(staging[5 * 512..], file[5 * 512..6 * 512]);
}

#[test]
fn safe_mode_says_so_at_connect_and_reports_the_unmet_dependency() {
    let mut sim = Sim::boron();
    // An application built for a newer Device OS than the one installed.
    let needs_newer = Versions {
        system_part: 6300,
        product_version: 5,
        ..Versions::BASELINE
    };
    sim.device
        .device_mut()
        .program_module(&app_module("boron", &needs_newer))
        .unwrap();
    sim.connect();
    assert!(sim.device.status().safe_mode);
    assert!(sim
        .trace
        .iter()
        .any(|(_, e)| matches!(e, DeviceEvent::SafeMode { .. })));
    let sent = sim.cloud.sent_by_device();
    let hello = match sent[0].particle().unwrap().body {
        Body::Hello(h) => h,
        other => panic!("{other:?}"),
    };
    // Safe mode: product id = platform id; the version only from a user part that validates.
    assert_eq!((hello.product_id, hello.product_version), (13, 0xFFFF));
    let events = sim.cloud.published();
    assert_eq!(
        events[..2],
        [
            ("spark/device/safemode".to_string(), String::new()),
            (
                "spark/device/last_reset".to_string(),
                "power_down".to_string()
            ),
        ]
    );
    let describe = sent
        .iter()
        .find(|s| s.message.option(option::URI_QUERY) == Some(&[1][..]))
        .unwrap();
    let d = SystemDescribe::parse(&describe.message.payload).unwrap();
    let user = d.firmware_modules.iter().find(|m| m.r#type == 5).unwrap();
    assert_eq!(user.checked_flags, 0x1E);
    assert_eq!(user.passed_flags, 0x1A, "DEPENDENCIES not passed");
    assert_eq!(user.dependencies[0].version, 6300);
}

#[test]
fn a_flash_io_error_at_the_commit_fails_the_update_and_reconnects_without_a_reset() {
    // PR #2270's error path: HAL_FLASH_End fails, the comms loop breaks, the device reconnects
    // and keeps running its firmware; the cloud can try again.
    use emulator::flash::{Activity, IoFault, OpKind};
    let mut sim = Sim::boron();
    sim.connect();
    sim.device
        .device_mut()
        .flash_mut()
        .schedule_io_fault(IoFault {
            activity: Activity::Commit,
            kind: Some(OpKind::Program),
            skip: 0,
        });
    let from = sim.trace.len();
    let file = app_module("boron", &v4());
    sim.transfer(&file, 512);
    sim.run_for(5 * SECOND);
    assert!(
        sim.device.device().flash().pending_io_faults().is_empty(),
        "the commit wrote flash and the fault fired"
    );
    let trace = sim.trace_since(from);
    let failed = trace
        .iter()
        .position(|e| matches!(e, DeviceEvent::OtaFailed { code: -219, .. }))
        .unwrap_or_else(|| panic!("no FLASH_IO failure in {trace:#?}"));
    let disconnected = trace
        .iter()
        .position(|e| {
            matches!(
                e,
                DeviceEvent::Disconnected {
                    reason: DisconnectReason::OtaError { code: -219 }
                }
            )
        })
        .expect("disconnected for the OTA error");
    assert!(failed < disconnected);
    assert!(trace[disconnected..]
        .iter()
        .any(|e| matches!(e, DeviceEvent::Connected { .. })));
    assert!(
        !trace
            .iter()
            .any(|e| matches!(e, DeviceEvent::Booted { .. })),
        "no reset"
    );
    assert_eq!(sim.device.status().versions.product_version, Some(3));
    assert!(sim.device.device_mut().pending_slots().unwrap().is_empty());
    // The fault was one operation: the cloud's next attempt goes through.
    sim.transfer(&file, 512);
    sim.run_for(5 * SECOND);
    assert_eq!(sim.device.status().versions.product_version, Some(4));
}
