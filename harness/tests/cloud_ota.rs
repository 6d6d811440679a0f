//! The cloud's OTA v3 sender against a scripted device, in virtual time (reference
//! `particle-protocol.md` 2.2-2.7 and section 8): UpdateStart, window, retransmission from the
//! UpdateAck bitmap and on silence, resume offset, UpdateFinish, commit on the 2.04 ACK, device
//! errors, queueing, requeue on disconnect, legacy refusal, success on reconnection.

mod cloud_support;

use cloud_support::*;
use harness::cloud::{CloudEvent, Interrupted, JobId, JobStatus, OtaEventKind};
use protocol::coap::{option, Code, IncomingRequest, MessageType};
use protocol::message::{
    Body, Diagnostic, FinishStats, ParticleMessage, Response, UpdateStart, UpdateStartResponse,
};
use protocol::module::{Module, ModuleBuilder, ModuleFunction};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

fn file(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// A user app for the Argon (platform 12), product version `version`.
fn app(version: u16, body_len: usize) -> Vec<u8> {
    ModuleBuilder::new(ModuleFunction::UserPart, 12)
        .index(2)
        .version(6)
        .start_address(0xB4000)
        .product(12, version)
        .body(file(body_len, u64::from(version)))
        .build()
        .unwrap()
}

fn app_hash(module: &[u8]) -> [u8; 32] {
    Module::parse(module).unwrap().sha256()
}

/// World with device 0 connected as a Gen3 Argon and its post-connect sequence settled.
fn settled(seed: u64, flags: u16) -> World {
    let mut w = World::new(seed, 1);
    w.connect(
        0,
        hello(device_id(0), 12, 3, flags),
        &system_describe([3; 32]),
    );
    w.advance(secs(3));
    w
}

fn take_start(w: &mut World) -> (IncomingRequest, UpdateStart, Vec<u8>) {
    let (request, message) = w
        .device(0)
        .take(|m| matches!(m.body, Body::UpdateStart(_)))
        .expect("an UpdateStart");
    let Body::UpdateStart(start) = message.body else {
        unreachable!()
    };
    (request, start, message.token)
}

fn accept_start(w: &mut World, request: &IncomingRequest, window: u32, offset: u32) {
    let now = w.now;
    let created = w.device(0).respond_separately(
        now,
        request,
        UpdateStartResponse {
            window_size: window,
            resume_offset: offset,
        }
        .emit(),
    );
    w.pump();
    assert!(
        w.devices[0].acknowledged.contains(&created),
        "the cloud ACKs the 2.01"
    );
}

fn ota(w: &World, job: JobId) -> Vec<OtaEventKind> {
    w.events
        .iter()
        .filter_map(|e| match e {
            CloudEvent::Ota(o) if o.job == job => Some(o.kind.clone()),
            _ => None,
        })
        .collect()
}

fn indices(w: &World) -> Vec<u32> {
    w.devices[0].chunks().into_iter().map(|(i, _)| i).collect()
}

fn flash_status(w: &World) -> Vec<String> {
    w.cloud_stream()
        .into_iter()
        .filter(|(n, _)| n == "spark/flash/status")
        .map(|(_, d)| d)
        .collect()
}

#[test]
fn a_new_flash_supersedes_the_jobs_still_waiting_for_the_device() {
    let mut w = World::new(22, 1);
    let id = device_id(0);
    let first = w.cloud.flash(w.now, id, file(3000, 1));
    let second = w.cloud.flash(w.now, id, file(3000, 2));
    // The older job ends without a stream event; only the newest one is delivered.
    assert!(matches!(
        w.cloud.job(first),
        Some(JobStatus::Failed { code: None, message }) if message.contains("superseded by job")
    ));
    assert_eq!(w.cloud.job(second), Some(&JobStatus::Queued));
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    w.advance(secs(3));
    assert_eq!(w.cloud.job(second), Some(&JobStatus::Starting));
    assert!(!flash_status(&w).iter().any(|d| d.trim() == "failed"));
}

#[test]
fn flash_to_an_offline_device_is_queued_and_starts_after_its_post_connect_sequence() {
    let mut w = World::new(21, 1);
    let id = device_id(0);
    let data = file(3000, 1);
    let job = w.cloud.flash(w.now, id, data.clone());
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Queued));
    w.advance(secs(10));
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Queued));

    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    w.advance(ms(900));
    assert!(w.devices[0]
        .inbox
        .iter()
        .all(|(_, m)| !matches!(m.body, Body::UpdateStart(_))));
    w.advance(secs(2));
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Starting));

    // After the pending event, as its own CON with a 1-byte token, Uri-Path first.
    let order: Vec<&str> = w.devices[0]
        .received
        .iter()
        .filter_map(|m| match &m.body {
            Body::Event(e) if e.name == "particle/device/updates/pending" => Some("pending"),
            Body::UpdateStart(_) => Some("start"),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec!["pending", "start"]);
    let start_message = w.devices[0]
        .received
        .iter()
        .find(|m| matches!(m.body, Body::UpdateStart(_)))
        .unwrap()
        .clone();
    assert_eq!(start_message.kind, MessageType::Confirmable);
    assert_eq!(start_message.token.len(), 1);
    let coap = start_message.to_coap().unwrap();
    assert_eq!(coap.options[0].number, option::URI_PATH);
    let (_, start, _) = take_start(&mut w);
    assert_eq!(
        start,
        UpdateStart {
            file_size: 3000,
            file_sha256: Some(Sha256::digest(&data).into()),
            chunk_size: 512,
            discard_data: false,
            module_function: None,
        }
    );
    assert_eq!(
        w.cloud_stream().last().unwrap(),
        &("spark/flash/status".to_string(), "started ".to_string())
    );
    assert!(matches!(
        ota(&w, job).as_slice(),
        [
            OtaEventKind::Queued,
            OtaEventKind::Started {
                attempt: 1,
                file_size: 3000,
                chunk_size: 512
            }
        ]
    ));
}

#[test]
fn flash_to_an_online_settled_device_starts_at_once() {
    let mut w = settled(22, GEN3_FLAGS);
    let job = w.cloud.flash(w.now, device_id(0), file(1000, 2));
    w.pump();
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Starting));
    take_start(&mut w);
}

#[test]
fn chunks_are_non_without_token_and_never_beyond_the_window() {
    let mut w = settled(23, GEN3_FLAGS);
    let data = file(512 * 20, 3);
    let job = w.cloud.flash(w.now, device_id(0), data.clone());
    w.pump();
    let (request, _, _) = take_start(&mut w);
    accept_start(&mut w, &request, 4, 0);
    assert_eq!(indices(&w), vec![1, 2, 3, 4]);
    for m in w.devices[0]
        .received
        .iter()
        .filter(|m| matches!(m.body, Body::UpdateChunk(_)))
    {
        assert_eq!(m.kind, MessageType::NonConfirmable);
        assert!(m.token.is_empty());
    }
    for (i, chunk) in w.devices[0].chunks() {
        let start = (i as usize - 1) * 512;
        assert_eq!(chunk, data[start..start + 512]);
    }
    w.advance(ms(500));
    assert_eq!(indices(&w), vec![1, 2, 3, 4], "nothing more without an ack");
    let now = w.now;
    w.device(0).send_ack(now, 2, &[]);
    w.pump();
    assert_eq!(indices(&w), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        w.cloud.job(job),
        Some(&JobStatus::Transferring {
            resume_offset: 0,
            window: 4,
            chunks: 20,
            sent: 6,
            acked: 2,
            retransmissions: 0,
        })
    );
}

#[test]
fn an_ack_with_a_bitmap_gap_resends_exactly_the_missing_chunk() {
    let mut w = settled(24, GEN3_FLAGS);
    let data = file(512 * 20, 4);
    let job = w.cloud.flash(w.now, device_id(0), data.clone());
    w.pump();
    let (request, _, _) = take_start(&mut w);
    accept_start(&mut w, &request, 8, 0);
    assert_eq!(indices(&w), (1..=8).collect::<Vec<_>>());
    w.advance(ms(100));
    let now = w.now;
    // Chunk 2 lost: cumulative 1, bitmap holds 3..=8.
    w.device(0).send_ack(now, 1, &[3, 4, 5, 6, 7, 8]);
    w.pump();
    let chunks = w.devices[0].chunks();
    let after: Vec<u32> = chunks[8..].iter().map(|(i, _)| *i).collect();
    assert_eq!(
        after,
        vec![2, 9],
        "the hole, then the one chunk the window frees"
    );
    assert_eq!(chunks[8].1, data[512..1024]);
    assert!(ota(&w, job).contains(&OtaEventKind::Retransmitted { indices: vec![2] }));
    // The same report again soon after: no second copy yet.
    let now = w.now;
    w.device(0).send_ack(now, 1, &[3, 4, 5, 6, 7, 8, 9]);
    w.pump();
    assert_eq!(w.devices[0].chunks().len(), 10);
}

#[test]
fn the_resume_offset_is_honoured_with_indices_relative_to_it() {
    let mut w = settled(25, GEN3_FLAGS);
    let data = file(5000, 5);
    let job = w.cloud.flash(w.now, device_id(0), data.clone());
    w.pump();
    let (request, _, _) = take_start(&mut w);
    accept_start(&mut w, &request, 16, 1024);
    let chunks = w.devices[0].chunks();
    assert_eq!(
        chunks.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(chunks[0].1, data[1024..1536]);
    assert_eq!(chunks[7].1, data[1024 + 7 * 512..]);
    assert!(ota(&w, job).contains(&OtaEventKind::Accepted {
        window: 16,
        resume_offset: 1024,
        chunks: 8
    }));
}

#[test]
fn finish_comes_only_after_every_chunk_is_acked_and_the_204_ack_commits() {
    let mut w = settled(26, GEN3_FLAGS);
    let job = w.cloud.flash(w.now, device_id(0), file(2000, 6));
    w.pump();
    let (request, _, _) = take_start(&mut w);
    accept_start(&mut w, &request, 8, 0);
    assert_eq!(indices(&w), vec![1, 2, 3, 4]);
    let now = w.now;
    w.device(0).send_ack(now, 3, &[]);
    w.pump();
    assert!(w
        .device(0)
        .take(|m| matches!(m.body, Body::UpdateFinish(_)))
        .is_none());
    w.device(0).send_ack(now, 4, &[]);
    w.pump();
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Finishing));
    let (request, finish) = w
        .device(0)
        .take(|m| matches!(m.body, Body::UpdateFinish(_)))
        .expect("UpdateFinish");
    assert_eq!(finish.kind, MessageType::Confirmable);
    assert_eq!(finish.token.len(), 1);
    assert_eq!(
        finish.to_coap().unwrap().options.len(),
        1,
        "Uri-Path F only"
    );

    let stats = FinishStats {
        recv_chunks: 4,
        dup_chunks: 0,
        ooo_chunks: 0,
        sent_acks: 2,
        proc_time: 40,
    };
    let changed = w
        .device(0)
        .respond_separately(now, &request, stats.response());
    w.pump();
    assert!(
        w.devices[0].acknowledged.contains(&changed),
        "the cloud ACKs the 2.04"
    );
    assert_eq!(
        w.cloud.job(job),
        Some(&JobStatus::Committed { stats: Some(stats) })
    );
    assert_eq!(flash_status(&w), vec!["started ", "success "]);
    assert_eq!(
        ota(&w, job).last(),
        Some(&OtaEventKind::Committed { stats: Some(stats) })
    );
}

#[test]
fn an_error_response_fails_the_job_with_the_devices_code_and_message() {
    let mut w = settled(27, GEN3_FLAGS);
    w.device(0).ota = Some(AutoOta::new(256, 0));
    w.device(0).ota.as_mut().unwrap().finish_error =
        Some((-1360, "Invalid platform ID".to_string()));
    let job = w.cloud.flash(w.now, device_id(0), file(4000, 7));
    w.advance(secs(1));
    assert_eq!(
        w.cloud.job(job),
        Some(&JobStatus::Failed {
            code: Some(-1360),
            message: "Invalid platform ID".into()
        })
    );
    assert_eq!(flash_status(&w), vec!["started ", "failed "]);
    // The device's separate 5.03 was acknowledged (the device cancels on that ACK).
    assert_eq!(w.devices[0].coap.unacknowledged(), 0);
}

#[test]
fn an_update_start_refused_with_updates_disabled_is_held_until_the_device_enables_updates() {
    let mut w = settled(28, GEN3_FLAGS);
    let job = w.cloud.flash(w.now, device_id(0), file(4000, 8));
    w.pump();
    let (request, _, _) = take_start(&mut w);
    let now = w.now;
    let error = w.device(0).respond_separately(
        now,
        &request,
        Response {
            code: Code::SERVICE_UNAVAILABLE,
            options: Vec::new(),
            payload: Diagnostic::new(-1380, "Firmware updates are disabled").emit(1024),
        },
    );
    w.pump();
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Held));
    assert!(w.devices[0].acknowledged.contains(&error));
    // The device is told an update is pending, and nothing else is tried meanwhile.
    assert!(w
        .cloud_stream()
        .contains(&("particle/device/updates/pending".into(), "true".into())));
    w.advance(secs(600));
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Held));
    assert_eq!(flash_status(&w), vec!["started "]);
    // Enabled: the update starts.
    let now = w.now;
    w.device(0)
        .publish(now, "particle/device/updates/enabled", "true");
    w.advance(secs(2));
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Starting));
    assert_eq!(flash_status(&w), vec!["started ", "started "]);
}

#[test]
fn silence_resends_the_first_unacknowledged_chunks() {
    let mut w = settled(29, GEN3_FLAGS);
    let job = w.cloud.flash(w.now, device_id(0), file(512 * 10, 9));
    w.pump();
    let (request, _, _) = take_start(&mut w);
    accept_start(&mut w, &request, 4, 0);
    w.advance(ms(999));
    assert_eq!(indices(&w), vec![1, 2, 3, 4]);
    w.advance(ms(2));
    assert_eq!(indices(&w), vec![1, 2, 3, 4, 1, 2]);
    assert!(ota(&w, job).contains(&OtaEventKind::Retransmitted {
        indices: vec![1, 2]
    }));
}

#[test]
fn a_chunk_refused_with_rst_fails_the_job() {
    let mut w = settled(30, GEN3_FLAGS);
    let job = w.cloud.flash(w.now, device_id(0), file(2000, 10));
    w.pump();
    let (request, _, _) = take_start(&mut w);
    accept_start(&mut w, &request, 8, 0);
    let (chunk, _) = w
        .device(0)
        .take(|m| matches!(m.body, Body::UpdateChunk(_)))
        .unwrap();
    let now = w.now;
    w.device(0).coap.reject(now, &chunk).unwrap();
    w.pump();
    assert!(matches!(
        w.cloud.job(job),
        Some(JobStatus::Failed { code: None, message }) if message.starts_with("the device refused chunk 1 (RST for message id")
    ));
}

#[test]
fn a_device_without_ota_v3_is_refused_clearly() {
    let mut w = settled(31, GEN3_FLAGS & !0x80);
    let job = w.cloud.flash(w.now, device_id(0), file(2000, 11));
    w.advance(secs(1));
    let Some(JobStatus::Failed {
        code: None,
        message,
    }) = w.cloud.job(job)
    else {
        panic!("{:?}", w.cloud.job(job))
    };
    assert_eq!(
        message,
        "the device does not speak OTA v3 (Hello flags 0x0076 lack 0x80); the legacy chunked protocol is not supported"
    );
    assert!(w.devices[0]
        .received
        .iter()
        .all(|m| !matches!(m.body, Body::UpdateStart(_))));
    assert_eq!(flash_status(&w), vec!["failed "]);
}

#[test]
fn a_resume_offset_at_the_end_of_the_file_goes_straight_to_finish() {
    let mut w = settled(32, GEN3_FLAGS);
    let job = w.cloud.flash(w.now, device_id(0), file(2000, 12));
    w.pump();
    let (request, _, _) = take_start(&mut w);
    accept_start(&mut w, &request, 8, 2000);
    assert!(indices(&w).is_empty());
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Finishing));
}

#[test]
fn with_interrupted_fail_a_disconnect_mid_transfer_fails_the_job_and_publishes_failed() {
    let mut w = settled(34, GEN3_FLAGS);
    w.cloud.set_interrupted(Interrupted::Fail);
    let id = device_id(0);
    let job = w.cloud.flash(w.now, id, file(512 * 12, 14));
    w.pump();
    let (request, _, _) = take_start(&mut w);
    accept_start(&mut w, &request, 8, 0);
    let now = w.now;
    w.device(0).send_ack(now, 4, &[]);
    w.pump();
    w.device(0).link_up = false;
    w.advance(secs(60));
    assert!(matches!(
        w.cloud.job(job),
        Some(JobStatus::Failed { code: None, message }) if message.contains("offline")
    ));
    let stream = w.cloud_stream();
    let offline = stream
        .iter()
        .position(|(n, d)| n == "spark/status" && d == "offline")
        .expect("offline");
    let failed = stream
        .iter()
        .position(|(n, d)| n == "spark/flash/status" && d.trim() == "failed")
        .expect("failed");
    assert!(offline < failed, "offline, then failed: {stream:?}");
}

#[test]
fn a_disconnect_mid_transfer_requeues_and_the_next_connection_resumes() {
    let mut w = settled(33, GEN3_FLAGS);
    let id = device_id(0);
    let data = file(512 * 12, 13);
    let job = w.cloud.flash(w.now, id, data.clone());
    w.pump();
    let (request, _, _) = take_start(&mut w);
    accept_start(&mut w, &request, 8, 0);
    let now = w.now;
    w.device(0).send_ack(now, 4, &[]);
    w.pump();
    let session = w.devices[0].export_session().unwrap();
    // The link goes; the device is gone for the cloud after twice its keepalive.
    w.device(0).link_up = false;
    w.advance(secs(60));
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Queued));
    assert!(ota(&w, job).contains(&OtaEventKind::Requeued { resume_hint: 2048 }));

    // Back through a resumed session; the device holds 2048 bytes.
    w.device(0).link_up = true;
    w.device(0).ota = Some(AutoOta::new(256, 2048));
    let now = w.now;
    w.device(0).resume(now, &session, addr("10.0.1.1:40002"));
    w.device(0)
        .send(now, MessageType::Confirmable, Vec::new(), Body::Ping);
    w.advance(secs(5));
    let receiver = w.devices[0].ota.as_ref().unwrap();
    assert_eq!(receiver.starts, 1);
    assert!(receiver.finished);
    assert_eq!(receiver.file[2048..], data[2048..]);
    assert!(matches!(
        w.cloud.job(job),
        Some(JobStatus::Committed { .. })
    ));
    let kinds = ota(&w, job);
    assert!(kinds.contains(&OtaEventKind::Started {
        attempt: 2,
        file_size: 512 * 12,
        chunk_size: 512
    }));
    assert!(kinds.contains(&OtaEventKind::Accepted {
        window: 256,
        resume_offset: 2048,
        chunks: 8
    }));
    assert_eq!(flash_status(&w), vec!["started ", "started ", "success "]);
}

#[test]
fn a_lossy_link_still_delivers_the_exact_file() {
    let mut w = settled(34, GEN3_FLAGS);
    let data = file(512 * 300 + 77, 14);
    w.device(0).ota = Some(AutoOta::new(256, 0));
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    w.device(0).drop_incoming = Some(Box::new(move |m: &ParticleMessage| {
        matches!(m.body, Body::UpdateChunk(_)) && rng.next_u32() % 100 < 15
    }));
    let job = w.cloud.flash(w.now, device_id(0), data.clone());
    w.advance(secs(60));
    assert!(
        matches!(w.cloud.job(job), Some(JobStatus::Committed { .. })),
        "{:?}",
        w.cloud.job(job)
    );
    assert_eq!(w.devices[0].ota.as_ref().unwrap().file, data);
    assert!(ota(&w, job)
        .iter()
        .any(|k| matches!(k, OtaEventKind::Retransmitted { .. })));
}

#[test]
fn the_job_succeeds_when_the_device_returns_running_the_file() {
    let mut w = World::new(35, 1);
    let id = device_id(0);
    let v3 = app(3, 3000);
    let v4 = app(4, 3000);
    w.connect(
        0,
        hello(id, 12, 3, GEN3_FLAGS),
        &system_describe(app_hash(&v3)),
    );
    w.device(0).ota = Some(AutoOta::new(256, 0));
    let job = w.cloud.flash(w.now, id, v4.clone());
    w.advance(secs(5));
    assert!(matches!(
        w.cloud.job(job),
        Some(JobStatus::Committed { .. })
    ));
    assert_eq!(w.devices[0].ota.as_ref().unwrap().file, v4);

    // The device resets into v4 and resumes its session with a Hello and a new describe.
    let session = w.devices[0].export_session().unwrap();
    w.advance(secs(2));
    let now = w.now;
    w.device(0).resume(now, &session, addr("10.0.1.1:40000"));
    w.post_connect(
        0,
        hello(id, 12, 4, GEN3_FLAGS),
        &system_describe(app_hash(&v4)),
    );
    w.advance(secs(2));
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Succeeded));
    assert_eq!(ota(&w, job).last(), Some(&OtaEventKind::Succeeded));
    let stream = w.cloud_stream();
    let tail = &stream[stream.len() - 6..];
    assert_eq!(
        tail,
        pairs(&[
            ("spark/flash/status", "started "),
            ("spark/flash/status", "success "),
            ("spark/status", "offline"),
            ("spark/status", "online"),
            ("spark/device/app-hash", &hex(&app_hash(&v4))),
            ("particle/device/updates/pending", "false"),
        ])
    );
    assert!(w.cloud.device(id).unwrap().jobs.is_empty());
}

#[test]
fn a_device_back_without_the_new_firmware_is_sent_it_again_then_given_up() {
    let mut w = World::new(36, 1);
    let id = device_id(0);
    let v3 = app(3, 3000);
    let v4 = app(4, 3000);
    w.connect(
        0,
        hello(id, 12, 3, GEN3_FLAGS),
        &system_describe(app_hash(&v3)),
    );
    w.device(0).ota = Some(AutoOta::new(256, 0));
    let job = w.cloud.flash(w.now, id, v4);
    w.advance(secs(5));
    w.advance(secs(2));
    assert!(matches!(
        w.cloud.job(job),
        Some(JobStatus::Committed { .. })
    ));
    // The device comes back still running v3 (the commit was lost): not success, not a
    // failure either: the cloud sends it again, and says why.
    w.connect(
        0,
        hello(id, 12, 3, GEN3_FLAGS),
        &system_describe(app_hash(&v3)),
    );
    let info = w.cloud.job_info(job).unwrap();
    assert!(!info.status.is_finished(), "{info:?}");
    assert!(
        info.last_reason.as_deref().is_some_and(|r| r.starts_with(
            "the update was committed but the device came back without it: the device reports user part 2 as version 6 hash"
        )),
        "{info:?}"
    );
    w.advance(secs(7));
    assert_eq!(w.cloud.job_info(job).unwrap().attempts, 2);
    // It never takes: bounded, then reported as given up.
    for _ in 0..6 {
        w.connect(
            0,
            hello(id, 12, 3, GEN3_FLAGS),
            &system_describe(app_hash(&v3)),
        );
        w.advance(secs(7));
    }
    let Some(JobStatus::Failed {
        code: None,
        message,
    }) = w.cloud.job(job)
    else {
        panic!("{:?}", w.cloud.job(job))
    };
    assert!(
        message.starts_with("gave up after 5 attempts: the update was committed but the device came back without it"),
        "{message}"
    );
    assert_eq!(w.cloud.job_info(job).unwrap().attempts, 5);
    assert_eq!(
        flash_status(&w),
        ["started ", "success "].repeat(5),
        "each attempt is a transfer of its own on the stream"
    );
}

#[test]
fn jobs_for_one_device_run_one_after_the_other() {
    let mut w = settled(37, GEN3_FLAGS);
    w.device(0).ota = Some(AutoOta::new(256, 0));
    let a = w.cloud.flash(w.now, device_id(0), file(3000, 15));
    let b = w.cloud.flash(w.now, device_id(0), file(3000, 16));
    w.pump();
    assert_eq!(w.cloud.job(b), Some(&JobStatus::Queued));
    w.advance(secs(3));
    assert!(matches!(w.cloud.job(a), Some(JobStatus::Committed { .. })));
    assert!(matches!(w.cloud.job(b), Some(JobStatus::Committed { .. })));
    assert_eq!(w.devices[0].ota.as_ref().unwrap().starts, 2);
}

#[test]
fn flash_to_an_unknown_device_or_an_empty_file_fails_at_once() {
    let mut w = World::new(38, 1);
    let unknown = w.cloud.flash(w.now, [7; 12], file(10, 1));
    assert_eq!(
        w.cloud.job(unknown),
        Some(&JobStatus::Failed {
            code: None,
            message: "device 070707070707070707070707 is not registered with this cloud".into()
        })
    );
    let empty = w.cloud.flash(w.now, device_id(0), Vec::new());
    assert!(matches!(
        w.cloud.job(empty),
        Some(JobStatus::Failed { code: None, .. })
    ));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn two_devices_update_in_parallel_each_on_its_own_session() {
    let mut w = World::new(39, 2);
    for i in 0..2 {
        w.connect(
            i,
            hello(device_id(i), 12, 3, GEN3_FLAGS),
            &system_describe([3; 32]),
        );
        w.device(i).ota = Some(AutoOta::new(64, 0));
    }
    let a = file(512 * 40, 17);
    let b = file(512 * 33 + 5, 18);
    let ja = w.cloud.flash(w.now, device_id(0), a.clone());
    let jb = w.cloud.flash(w.now, device_id(1), b.clone());
    w.advance(secs(5));
    assert!(matches!(w.cloud.job(ja), Some(JobStatus::Committed { .. })));
    assert!(matches!(w.cloud.job(jb), Some(JobStatus::Committed { .. })));
    assert_eq!(w.devices[0].ota.as_ref().unwrap().file, a);
    assert_eq!(w.devices[1].ota.as_ref().unwrap().file, b);
    assert_ne!(
        w.cloud.device(device_id(0)).unwrap().connection_id,
        w.cloud.device(device_id(1)).unwrap().connection_id
    );
}

#[test]
fn nonsense_from_an_authenticated_device_never_breaks_the_cloud() {
    let mut w = settled(40, GEN3_FLAGS);
    let job = w.cloud.flash(w.now, device_id(0), file(512 * 8, 19));
    w.pump();
    let (request, _, _) = take_start(&mut w);
    accept_start(&mut w, &request, 8, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let now = w.now;
    for round in 0..3000 {
        let len = (rng.next_u32() % 40) as usize;
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        if round % 3 == 0 && len >= 4 {
            // Mostly-valid CoAP headers reach deeper: CON/NON POST with Uri-Path A, S, F, E...
            bytes[0] = 0x40 | ((round as u8 & 1) << 4);
            bytes[1] = 0x02;
        }
        let client = w.devices[0].dtls.as_mut().unwrap();
        client.send_application_data(now, &bytes).unwrap();
    }
    // Absurd acks: beyond the file, a giant bitmap of chunks that do not exist.
    w.device(0).send_ack(now, 1_000_000, &[]);
    w.device(0).send_ack(now, 0, &(9..2000).collect::<Vec<_>>());
    w.pump();
    assert!(w.cloud.stats().malformed > 0);
    assert!(w.cloud.device(device_id(0)).unwrap().online);
    assert!(
        matches!(
            w.cloud.job(job),
            Some(JobStatus::Transferring { acked: 0, .. })
        ),
        "{:?}",
        w.cloud.job(job)
    );
    let handle = w.device(0).send_time_request(now);
    w.pump();
    assert!(w.devices[0].responses.iter().any(|(h, _)| *h == handle));
}

#[test]
fn a_transfer_without_any_ack_for_300_s_waits_for_the_device_then_starts_over() {
    // A Boron: its 23 min keepalive keeps it "online" long after its transfer died.
    let mut w = World::new(41, 1);
    w.connect(
        0,
        hello(device_id(0), 13, 3, GEN3_FLAGS),
        &system_describe([3; 32]),
    );
    w.advance(secs(3));
    let job = w.cloud.flash(w.now, device_id(0), file(512 * 10, 20));
    w.pump();
    let (request, _, _) = take_start(&mut w);
    accept_start(&mut w, &request, 4, 0);
    w.advance(secs(299));
    assert!(matches!(
        w.cloud.job(job),
        Some(JobStatus::Transferring { .. })
    ));
    w.advance(secs(2));
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Queued));
    assert!(ota(&w, job).contains(&OtaEventKind::Requeued { resume_hint: 0 }));
    // Silent (asleep without a Goodbye): no new UpdateStart, no `started ` every 300 s.
    w.advance(secs(1200));
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Queued));
    assert_eq!(flash_status(&w), vec!["started "]);
    // Heard from again: the next attempt starts.
    let now = w.now;
    w.device(0)
        .send(now, MessageType::Confirmable, Vec::new(), Body::Ping);
    w.pump();
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Starting));
    assert!(ota(&w, job).contains(&OtaEventKind::Started {
        attempt: 2,
        file_size: 5120,
        chunk_size: 512
    }));
}

#[test]
fn a_late_204_after_the_finish_timed_out_commits_and_nothing_is_sent_again() {
    let mut w = settled(42, GEN3_FLAGS);
    let v4 = app(4, 2000);
    let job = w.cloud.flash(w.now, device_id(0), v4.clone());
    w.pump();
    let (request, _, _) = take_start(&mut w);
    let chunks = UpdateStart {
        file_size: v4.len() as u32,
        file_sha256: None,
        chunk_size: 512,
        discard_data: false,
        module_function: None,
    }
    .chunk_count(0);
    accept_start(&mut w, &request, 8, 0);
    let now = w.now;
    w.device(0).send_ack(now, chunks, &[]);
    w.pump();
    let (finish, _) = w
        .device(0)
        .take(|m| matches!(m.body, Body::UpdateFinish(_)))
        .expect("UpdateFinish");
    // The device validates slowly and answers nothing: the cloud's CON times out and the
    // device is taken for gone.
    w.advance(secs(120));
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Queued));
    // Then its 2.04 arrives (a resumption for the cloud): it is ACKed, so the device commits.
    let now = w.now;
    let changed = w
        .device(0)
        .respond_separately(now, &finish, FinishStats::default().response());
    w.pump();
    assert!(w.devices[0].acknowledged.contains(&changed));
    assert!(
        matches!(w.cloud.job(job), Some(JobStatus::Committed { .. })),
        "{:?}",
        w.cloud.job(job)
    );
    assert_eq!(flash_status(&w), vec!["started ", "success "]);
    w.advance(secs(10));
    assert!(
        w.device(0)
            .take(|m| matches!(m.body, Body::UpdateStart(_)))
            .is_none(),
        "the same file is not sent again"
    );
    // The device comes back running v4: success.
    w.connect(
        0,
        hello(device_id(0), 12, 4, GEN3_FLAGS),
        &system_describe(app_hash(&v4)),
    );
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Succeeded));
}

#[test]
fn flashing_what_the_device_already_runs_succeeds_without_a_transfer() {
    let mut w = World::new(43, 1);
    let v3 = app(3, 3000);
    w.connect(
        0,
        hello(device_id(0), 12, 3, GEN3_FLAGS),
        &system_describe(app_hash(&v3)),
    );
    w.advance(secs(3));
    let job = w.cloud.flash(w.now, device_id(0), v3);
    w.advance(secs(3));
    assert_eq!(w.cloud.job(job), Some(&JobStatus::Succeeded));
    assert!(w
        .device(0)
        .take(|m| matches!(m.body, Body::UpdateStart(_)))
        .is_none());
    assert!(flash_status(&w).is_empty());
}

#[test]
fn a_device_that_resumes_its_session_after_the_commit_is_asked_for_its_describe() {
    // Real Device OS: an apply that fails after the commit reboots into the old firmware and
    // resumes the DTLS session: no Hello, no describe.
    let mut w = World::new(44, 1);
    let id = device_id(0);
    let v3 = app(3, 3000);
    let v4 = app(4, 3000);
    w.connect(
        0,
        hello(id, 12, 3, GEN3_FLAGS),
        &system_describe(app_hash(&v3)),
    );
    w.device(0).ota = Some(AutoOta::new(256, 0));
    let job = w.cloud.flash(w.now, id, v4);
    w.advance(secs(7));
    assert!(matches!(
        w.cloud.job(job),
        Some(JobStatus::Committed { .. })
    ));
    let session = w.devices[0].export_session().unwrap();
    w.device(0).link_up = false;
    w.advance(secs(60));
    w.device(0).link_up = true;
    w.device(0).ota = None;
    let now = w.now;
    w.device(0).resume(now, &session, addr("10.0.1.1:40007"));
    w.device(0)
        .send(now, MessageType::Confirmable, Vec::new(), Body::Ping);
    w.advance(secs(3));
    assert!(
        w.devices[0]
            .received
            .iter()
            .any(|m| matches!(m.body, Body::DescribeRequest(_))),
        "the cloud asks for the describe"
    );
    // The describe shows v3: not success; the cloud sends v4 again.
    let info = w.cloud.job_info(job).unwrap();
    assert_ne!(info.status, JobStatus::Succeeded);
    assert!(
        info.last_reason
            .as_deref()
            .is_some_and(|r| r.contains("came back without it")),
        "{info:?}"
    );
    assert!(w
        .device(0)
        .take(|m| matches!(m.body, Body::UpdateStart(_)))
        .is_some());
}
