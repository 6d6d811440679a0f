//! The OTA v3 receiver as the cloud sees it: UpdateStart / UpdateChunk / UpdateFinish fed in
//! virtual time, acks and outcomes checked against reference 2.2-2.5 and a real Device OS
//! capture, the update applied by the bootloader at the next boot (reference 5.3-5.4).

use std::time::Duration;

use emulator::board::{Board, RegionKind};
use emulator::bootloader::{BootReport, BootState, SafeModeReason};
use emulator::device::Device;
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use emulator::flash::CutMode;
use emulator::os::ota::{
    ChunkOutcome, FinishOutcome, OtaConfig, OtaError, OtaEvent, OtaReceiver, StartAccepted,
    TransferFile, TRANSFER_STATE_KEY,
};
use protocol::coap::MessageType;
use protocol::message::{
    coap_code_for_system_error, Body, FinishStats, ParticleMessage, UpdateAck, UpdateChunk,
    UpdateFinish, UpdateStart,
};
use sha2::{Digest, Sha256};

const SEED: u64 = 11;

fn sizes() -> ModuleSizes {
    ModuleSizes {
        user_part: 12 * 1024,
        system_part: 16 * 1024,
        bootloader: 8 * 1024,
        other: 4096,
    }
}

fn v4() -> Versions {
    Versions {
        product_version: 4,
        ..Versions::BASELINE
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn app_version(report: &BootReport) -> Option<u16> {
    report
        .module(RegionKind::UserPart)
        .and_then(|m| m.product_version)
}

/// One emulated device with its receiver, driven in virtual time.
struct Rig {
    board: Board,
    device: Device,
    rx: OtaReceiver,
    now: Duration,
}

impl Rig {
    /// A Boron running Device OS 6.2.0 with app product version 3, booted once.
    fn new(name: &str) -> Rig {
        let board = Board::builtin(name).expect("built-in board");
        let (mut device, _) = FirmwareSet::new(&board, sizes(), SEED)
            .provision(&Versions::BASELINE)
            .expect("provision");
        let report = device.boot().expect("boot");
        assert_eq!(report.state, BootState::Running);
        assert_eq!(app_version(&report), Some(3));
        let rx = OtaReceiver::new(OtaConfig::for_board(&board));
        Rig {
            board,
            device,
            rx,
            now: ms(1_000),
        }
    }

    fn boron() -> Rig {
        Rig::new("boron")
    }

    /// The v4 app, `len` bytes.
    fn app(&self, versions: &Versions, len: u32) -> Vec<u8> {
        FirmwareSet::new(&self.board, sizes(), SEED)
            .module(RegionKind::UserPart, versions, len)
            .expect("module")
    }

    fn wait(&mut self, millis: u64) {
        self.now += ms(millis);
    }

    fn start(&mut self, request: &UpdateStart) -> Result<StartAccepted, OtaError> {
        self.rx.start(self.now, &mut self.device, request, true)
    }

    /// Sends chunk `index` of `file` (relative to `offset`) and collects the acks due now.
    fn send(
        &mut self,
        file: &[u8],
        offset: u32,
        chunk_size: u32,
        index: u32,
    ) -> (ChunkOutcome, Vec<UpdateAck>) {
        let chunk = chunk_of(file, offset, chunk_size, index);
        self.send_chunk(&chunk)
    }

    fn send_chunk(&mut self, chunk: &UpdateChunk) -> (ChunkOutcome, Vec<UpdateAck>) {
        let outcome = self.rx.chunk(self.now, &mut self.device, chunk);
        (outcome, self.acks())
    }

    fn acks(&mut self) -> Vec<UpdateAck> {
        std::iter::from_fn(|| self.rx.poll_ack(self.now)).collect()
    }

    /// Sends every chunk after `offset` in order, `gap` ms apart.
    fn send_all(&mut self, file: &[u8], offset: u32, chunk_size: u32, gap: u64) -> Vec<UpdateAck> {
        let count = (file.len() as u32 - offset).div_ceil(chunk_size);
        let mut acks = Vec::new();
        for index in 1..=count {
            self.wait(gap);
            let (outcome, a) = self.send(file, offset, chunk_size, index);
            assert_eq!(outcome, ChunkOutcome::Written, "chunk {index}");
            acks.extend(a);
        }
        acks
    }

    fn finish(&mut self) -> Result<FinishOutcome, OtaError> {
        self.rx
            .finish(self.now, &mut self.device, &UpdateFinish::default())
    }

    fn events(&mut self) -> Vec<OtaEvent> {
        std::iter::from_fn(|| self.rx.poll_event()).collect()
    }

    /// Reset: the bootloader applies what was committed.
    fn reboot(&mut self) -> BootReport {
        self.rx = OtaReceiver::new(OtaConfig::for_board(&self.board));
        self.device.boot().expect("boot")
    }

    fn stored_state(&mut self) -> Option<TransferFile> {
        self.device
            .store_get(TRANSFER_STATE_KEY)
            .expect("store")
            .map(TransferFile::from_bytes)
    }
}

fn start_request(file: &[u8], chunk_size: u32, with_hash: bool) -> UpdateStart {
    UpdateStart {
        file_size: file.len() as u32,
        file_sha256: with_hash.then(|| sha256(file)),
        chunk_size,
        discard_data: false,
        module_function: None,
    }
}

fn chunk_of(file: &[u8], offset: u32, chunk_size: u32, index: u32) -> UpdateChunk {
    let from = (offset + (index - 1) * chunk_size) as usize;
    let to = (from + chunk_size as usize).min(file.len());
    UpdateChunk {
        index,
        data: file[from..to].to_vec(),
    }
}

fn ack(cumulative: u32, received: &[u32]) -> UpdateAck {
    UpdateAck::from_received(cumulative, received.iter().copied())
}

/// Start, every chunk in order, finish, commit.
fn complete_update(rig: &mut Rig, file: &[u8], chunk_size: u32, with_hash: bool) -> FinishStats {
    let accepted = rig
        .start(&start_request(file, chunk_size, with_hash))
        .expect("start");
    rig.send_all(file, accepted.resume_offset, chunk_size, 20);
    let FinishOutcome::Validated(stats) = rig.finish().expect("finish") else {
        panic!("not validated")
    };
    rig.rx.commit(&mut rig.device).expect("commit");
    stats
}

// ----- the happy path -------------------------------------------------------------------

#[test]
fn in_order_transfer_commits_and_the_next_boot_runs_v4() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 20 * 1024);
    let accepted = rig.start(&start_request(&app, 512, true)).unwrap();
    assert_eq!(
        accepted,
        StartAccepted {
            window_size: 256,
            resume_offset: 0
        }
    );
    let acks = rig.send_all(&app, 0, 512, 20);
    // 40 chunks 20 ms apart: an ack every second chunk, the last one included.
    assert_eq!(acks.len(), 20);
    assert!(acks.iter().all(|a| a.bitmap.is_empty()));
    assert_eq!(acks.last().unwrap().cumulative, 40);
    let progress = rig.rx.progress().unwrap();
    assert_eq!(progress.contiguous_bytes, app.len() as u32);
    assert!(progress.resumable);

    let outcome = rig.finish().unwrap();
    assert_eq!(
        outcome,
        FinishOutcome::Validated(FinishStats {
            recv_chunks: 40,
            dup_chunks: 0,
            ooo_chunks: 0,
            sent_acks: 20,
            proc_time: 0,
        })
    );
    assert!(
        rig.rx.is_running(),
        "the commit waits for the ACK of the 2.04"
    );
    assert!(
        rig.device.pending_slots().unwrap().is_empty(),
        "nothing is committed before the cloud's ACK"
    );
    rig.rx.commit(&mut rig.device).unwrap();
    assert!(!rig.rx.is_running());
    assert_eq!(rig.device.pending_slots().unwrap().len(), 1);

    let events = rig.events();
    assert_eq!(events.first(), Some(&OtaEvent::Begin { file_size: 20480 }));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, OtaEvent::Progress { .. }))
            .count(),
        40
    );
    assert_eq!(
        events[events.len() - 3..],
        [
            OtaEvent::Progress {
                received_bytes: 20480,
                file_size: 20480
            },
            OtaEvent::Validated,
            OtaEvent::Complete
        ]
    );

    let report = rig.reboot();
    assert_eq!(report.applied.len(), 1);
    assert_eq!(report.state, BootState::Running);
    assert_eq!(app_version(&report), Some(4));
}

#[test]
fn the_captured_device_os_transfer_gives_the_same_acks_and_stats() {
    // vectors/wire set A: a 5000-byte file in 1024-byte chunks sent 1, 2, 4, 3, 5; Device OS
    // answered UpdateAck 1 [], 2 [02000000], 4 [], 5 [] and the stats below.
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 5000);
    let accepted = rig.start(&start_request(&app, 1024, true)).unwrap();
    assert_eq!(accepted.window_size, 128);
    let mut acks = Vec::new();
    for (index, wait) in [(1, 1001), (2, 35), (4, 20), (3, 16), (5, 13)] {
        rig.wait(wait);
        let (outcome, a) = rig.send(&app, 0, 1024, index);
        assert_eq!(outcome, ChunkOutcome::Written);
        acks.push(a);
    }
    assert_eq!(
        acks,
        vec![
            vec![ack(1, &[])],
            vec![],
            vec![ack(2, &[4])],
            vec![ack(4, &[])],
            vec![ack(5, &[])]
        ]
    );
    assert_eq!(acks[2][0].bitmap, vec![0x0000_0002]);
    rig.wait(1500);
    assert_eq!(
        rig.rx.poll_ack(rig.now),
        None,
        "nothing left to acknowledge"
    );
    let FinishOutcome::Validated(stats) = rig.finish().unwrap() else {
        panic!()
    };
    assert_eq!(
        stats.emit(),
        br#"{"recv_chunks":5,"dup_chunks":0,"ooo_chunks":1,"sent_acks":4,"proc_time":0}"#.to_vec()
    );
}

#[test]
fn update_acks_encode_as_the_reference_examples() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 4096);
    rig.start(&start_request(&app, 512, false)).unwrap();
    rig.wait(10);
    // Chunk 2 first: "cumulative 0, chunk 2 received".
    let (_, acks) = rig.send(&app, 0, 512, 2);
    let emit = |ack: &UpdateAck, mid: u16| {
        ParticleMessage {
            kind: MessageType::NonConfirmable,
            message_id: mid,
            token: vec![],
            body: Body::UpdateAck(ack.clone()),
        }
        .emit()
        .unwrap()
    };
    assert_eq!(
        emit(&acks[0], 0x0004),
        [0x50, 0x02, 0x00, 0x04, 0xB1, 0x41, 0xE0, 0x06, 0xE9, 0xFF, 0x02, 0x00, 0x00, 0x00]
    );
    // Chunk 1 fills the gap: "chunks 1-2 received, no gaps".
    let (_, acks) = rig.send(&app, 0, 512, 1);
    assert_eq!(
        emit(&acks[0], 0x0003),
        [0x50, 0x02, 0x00, 0x03, 0xB1, 0x41, 0xE1, 0x06, 0xE9, 0x02]
    );
}

// ----- ack timing ---------------------------------------------------------------------------

#[test]
fn every_second_chunk_is_acked_and_the_last_received_after_200_ms() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 4096);
    rig.start(&start_request(&app, 512, false)).unwrap();
    rig.wait(5);
    assert_eq!(rig.send(&app, 0, 512, 1).1, vec![], "ack delayed");
    rig.wait(5);
    assert_eq!(rig.send(&app, 0, 512, 2).1, vec![ack(2, &[])]);
    rig.wait(5);
    assert_eq!(rig.send(&app, 0, 512, 3).1, vec![]);
    assert_eq!(rig.rx.poll_timeout(), Some(rig.now + ms(200)));
    rig.wait(199);
    assert_eq!(rig.acks(), vec![]);
    rig.wait(1);
    assert_eq!(rig.acks(), vec![ack(3, &[])], "the delayed ack");
    assert_eq!(rig.acks(), vec![], "sent once");
    // 200 ms since the previous chunk: acked at once.
    rig.wait(300);
    assert_eq!(rig.send(&app, 0, 512, 4).1, vec![ack(4, &[])]);
    // The first chunk is acked at once when it comes 200 ms after the start.
    let mut rig = Rig::boron();
    rig.start(&start_request(&app, 512, false)).unwrap();
    rig.wait(200);
    assert_eq!(rig.send(&app, 0, 512, 1).1, vec![ack(1, &[])]);
}

#[test]
fn the_last_chunk_of_the_file_is_always_acked() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 3 * 512 - 100);
    rig.start(&start_request(&app, 512, false)).unwrap();
    rig.wait(1);
    assert_eq!(rig.send(&app, 0, 512, 1).1, vec![]);
    assert_eq!(rig.send(&app, 0, 512, 2).1, vec![ack(2, &[])]);
    assert_eq!(rig.send(&app, 0, 512, 3).1, vec![ack(3, &[])]);
}

#[test]
fn gaps_are_acked_selectively_until_they_are_filled() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 8 * 512);
    rig.start(&start_request(&app, 512, false)).unwrap();
    rig.wait(1);
    assert_eq!(rig.send(&app, 0, 512, 2).1, vec![ack(0, &[2])]);
    assert_eq!(rig.send(&app, 0, 512, 3).1, vec![ack(0, &[2, 3])]);
    assert_eq!(rig.send(&app, 0, 512, 6).1, vec![ack(0, &[2, 3, 6])]);
    assert_eq!(rig.send(&app, 0, 512, 1).1, vec![ack(3, &[6])]);
    // Gap state unchanged, no duplicate, first unacked chunk: still acked because a gap exists.
    assert_eq!(rig.send(&app, 0, 512, 5).1, vec![ack(3, &[5, 6])]);
    // Filling the gap changes the gap state: acked.
    assert_eq!(rig.send(&app, 0, 512, 4).1, vec![ack(6, &[])]);
    // Back to normal: the next chunk waits.
    assert_eq!(rig.send(&app, 0, 512, 7).1, vec![]);
    assert_eq!(rig.send(&app, 0, 512, 8).1, vec![ack(8, &[])]);
    let FinishOutcome::Validated(stats) = rig.finish().unwrap() else {
        panic!()
    };
    // Out of order (the chunk before it missing): 2, 6 and 5; not 3 (after 2) nor 1, 4, 7, 8.
    assert_eq!(stats.ooo_chunks, 3);
    assert_eq!(stats.recv_chunks, 8);
    assert_eq!(stats.sent_acks, 7);
}

#[test]
fn duplicates_are_not_written_and_are_acked_at_once() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 8 * 512);
    rig.start(&start_request(&app, 512, true)).unwrap();
    rig.wait(1);
    let garbage = |index| UpdateChunk {
        index,
        data: vec![0x00; 512],
    };
    assert_eq!(rig.send(&app, 0, 512, 1).1, vec![]);
    // Below the cumulative index; its (different) data must not reach flash.
    assert_eq!(
        rig.send_chunk(&garbage(1)),
        (ChunkOutcome::Duplicate, vec![ack(1, &[])])
    );
    assert_eq!(rig.send(&app, 0, 512, 4).1, vec![ack(1, &[4])]);
    // Bit already set in the bitmap.
    assert_eq!(
        rig.send_chunk(&garbage(4)),
        (ChunkOutcome::Duplicate, vec![ack(1, &[4])])
    );
    for index in [2, 3, 5, 6, 7, 8] {
        assert_eq!(rig.send(&app, 0, 512, index).0, ChunkOutcome::Written);
    }
    let FinishOutcome::Validated(stats) = rig.finish().unwrap() else {
        panic!()
    };
    assert_eq!((stats.recv_chunks, stats.dup_chunks), (10, 2));
    rig.rx.commit(&mut rig.device).unwrap();
    assert_eq!(app_version(&rig.reboot()), Some(4));
}

#[test]
fn chunks_beyond_the_window_are_ignored() {
    let mut rig = Rig::boron();
    // 1136-byte chunks: a window of 131072 / 1136 = 115 chunks.
    let app = rig.app(&v4(), 130 * 1136);
    let accepted = rig.start(&start_request(&app, 1136, false)).unwrap();
    assert_eq!(accepted.window_size, 115);
    rig.wait(1);
    assert_eq!(
        rig.send(&app, 0, 1136, 116),
        (ChunkOutcome::OutOfWindow, vec![])
    );
    assert_eq!(
        rig.send(&app, 0, 1136, 115),
        (ChunkOutcome::Written, vec![ack(0, &[115])])
    );
    for index in (1..=130).filter(|i| *i != 115) {
        assert_eq!(rig.send(&app, 0, 1136, index).0, ChunkOutcome::Written);
    }
    let FinishOutcome::Validated(stats) = rig.finish().unwrap() else {
        panic!()
    };
    // 116 was ignored, counted as received but not as a duplicate.
    assert_eq!((stats.recv_chunks, stats.dup_chunks), (131, 0));
}

// ----- refused chunks and starts -----------------------------------------------------------

#[test]
fn a_bad_chunk_index_or_size_is_rejected_and_cancels_the_update() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 4 * 512 - 8);
    let cases: Vec<(&str, UpdateChunk)> = vec![
        (
            "index 0",
            UpdateChunk {
                index: 0,
                data: vec![0; 512],
            },
        ),
        (
            "index beyond the count",
            UpdateChunk {
                index: 5,
                data: vec![0; 512],
            },
        ),
        (
            "short chunk that is not the last",
            UpdateChunk {
                index: 2,
                data: vec![0; 508],
            },
        ),
        (
            "long chunk",
            UpdateChunk {
                index: 1,
                data: vec![0; 516],
            },
        ),
        (
            "last chunk that does not end the file",
            UpdateChunk {
                index: 4,
                data: vec![0; 512],
            },
        ),
    ];
    for (what, chunk) in cases {
        rig.start(&start_request(&app, 512, true)).unwrap();
        rig.events();
        let (outcome, acks) = rig.send_chunk(&chunk);
        let ChunkOutcome::Rejected(e) = outcome else {
            panic!("{what}: {outcome:?}")
        };
        assert_eq!(e.code, -240, "{what}");
        assert_eq!(
            e.message, "Protocol error",
            "{what}: nRF52840 sends the default text"
        );
        assert!(acks.is_empty());
        assert!(!rig.rx.is_running(), "{what}");
        assert_eq!(rig.events(), vec![OtaEvent::Failed { code: -240 }]);
        assert_eq!(
            rig.send(&app, 0, 512, 1).0,
            ChunkOutcome::NotRunning,
            "{what}: later chunks get RST only"
        );
    }
}

#[test]
fn rtl872x_platforms_send_device_os_specific_messages() {
    let mut rig = Rig::new("p2");
    let app = rig.app(&v4(), 4096);
    rig.start(&start_request(&app, 512, false)).unwrap();
    let (outcome, _) = rig.send_chunk(&UpdateChunk {
        index: 0,
        data: vec![0; 512],
    });
    assert_eq!(
        outcome,
        ChunkOutcome::Rejected(OtaError {
            code: -240,
            message: "Invalid chunk index: 0".into(),
            detail: "Invalid chunk index: 0".into(),
        })
    );
    rig.start(&start_request(&app, 512, false)).unwrap();
    rig.send(&app, 0, 512, 1);
    let e = rig.finish().unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (-240, "Incomplete file transfer")
    );
    assert_eq!(
        String::from_utf8(e.diagnostic().emit(1024)).unwrap(),
        r#"{"code":-240,"message":"Incomplete file transfer"}"#
    );
}

#[test]
fn bad_start_options_are_refused_without_touching_a_running_update() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 4096);
    rig.start(&start_request(&app, 512, true)).unwrap();
    rig.send(&app, 0, 512, 1);
    for (chunk_size, file_size) in [(508, 4096), (1140, 4096), (514, 4096), (512, 0)] {
        let request = UpdateStart {
            file_size,
            chunk_size,
            ..start_request(&app, 512, true)
        };
        let e = rig.rx.check_start(&request).unwrap_err();
        assert_eq!(e.code, -240, "{chunk_size} {file_size}");
        assert_eq!(rig.start(&request).unwrap_err(), e);
        assert!(rig.rx.is_running(), "no side effect");
    }
    assert_eq!(rig.send(&app, 0, 512, 2).0, ChunkOutcome::Written);
    for ok in [512, 1136, 1024, 516] {
        assert!(rig.rx.check_start(&start_request(&app, ok, false)).is_ok());
    }
}

#[test]
fn a_file_larger_than_the_ota_area_is_refused_with_1351() {
    let mut rig = Rig::boron();
    let request = UpdateStart {
        file_size: 1_536_001,
        file_sha256: None,
        chunk_size: 512,
        discard_data: false,
        module_function: None,
    };
    let e = rig.start(&request).unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (-1351, "Invalid module size"));
    assert_eq!(coap_code_for_system_error(e.code).to_string(), "5.03");
    let fits = UpdateStart {
        file_size: 1_536_000,
        ..request
    };
    assert_eq!(rig.start(&fits).unwrap().resume_offset, 0);
}

#[test]
fn updates_disabled_refuse_start_with_1380_and_forced_updates_are_accepted() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 4096);
    let request = start_request(&app, 512, true);
    let e = rig
        .rx
        .start(rig.now, &mut rig.device, &request, false)
        .unwrap_err();
    assert_eq!(e.code, -1380);
    assert_eq!(coap_code_for_system_error(e.code).to_string(), "5.03");
    assert_eq!(
        String::from_utf8(e.diagnostic().emit(1024)).unwrap(),
        r#"{"code":-1380,"message":"Firmware updates are disabled"}"#
    );
    assert!(!rig.rx.is_running());
    assert!(rig.events().is_empty());
    // `updates_allowed` is enabled || forced: forced while disabled is accepted.
    assert!(rig
        .rx
        .start(rig.now, &mut rig.device, &request, true)
        .is_ok());
    rig.send(&app, 0, 512, 1);
    rig.events();
    // Disabling updates does not stop a running transfer, but a new UpdateStart replaces it
    // before being refused.
    assert!(rig
        .rx
        .start(rig.now, &mut rig.device, &request, false)
        .is_err());
    assert!(!rig.rx.is_running());
    assert_eq!(rig.events(), vec![OtaEvent::Failed { code: -140 }]);
}

#[test]
fn a_new_update_start_replaces_the_running_transfer() {
    let mut rig = Rig::boron();
    let old = rig.app(&v4(), 4096);
    rig.start(&start_request(&old, 512, true)).unwrap();
    rig.send(&old, 0, 512, 1);
    rig.events();
    let new = rig.app(
        &Versions {
            product_version: 5,
            ..Versions::BASELINE
        },
        6000,
    );
    let accepted = rig.start(&start_request(&new, 1024, true)).unwrap();
    assert_eq!(accepted.resume_offset, 0);
    assert_eq!(
        rig.events(),
        vec![
            OtaEvent::Failed { code: -140 },
            OtaEvent::Begin { file_size: 6000 }
        ]
    );
    rig.send_all(&new, 0, 1024, 5);
    rig.finish().unwrap();
    rig.rx.commit(&mut rig.device).unwrap();
    assert_eq!(app_version(&rig.reboot()), Some(5));
}

// ----- validation -------------------------------------------------------------------------

#[test]
fn a_module_for_another_platform_is_refused_with_1360_and_v3_keeps_running() {
    let mut rig = Rig::boron();
    let argon = Board::builtin("argon").unwrap();
    let argon_app = FirmwareSet::new(&argon, sizes(), SEED)
        .module(RegionKind::UserPart, &v4(), 8192)
        .unwrap();
    rig.start(&start_request(&argon_app, 512, true)).unwrap();
    // 2 s apart: the resume state is synced during the transfer.
    rig.send_all(&argon_app, 0, 512, 2_000);
    let e = rig.finish().unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (-1360, "Invalid module platform")
    );
    assert!(e.to_string().contains("platform 12"), "{e}");
    assert!(rig.stored_state().is_some());
    assert!(
        rig.rx.is_running(),
        "until the cloud ACKs the error response"
    );
    // The cloud ACKs the error response: the update is cancelled and its data discarded.
    rig.rx.cancel(&mut rig.device, false).unwrap();
    assert!(
        rig.stored_state().is_none(),
        "validation failure discards the resume state"
    );
    assert_eq!(rig.events().last(), Some(&OtaEvent::Failed { code: -1360 }));
    assert!(rig.device.pending_slots().unwrap().is_empty());
    let report = rig.reboot();
    assert_eq!(report.state, BootState::Running);
    assert_eq!(app_version(&report), Some(3));
    // The next attempt starts from scratch.
    let accepted = rig.start(&start_request(&argon_app, 512, true)).unwrap();
    assert_eq!(accepted.resume_offset, 0);
}

#[test]
fn a_corrupted_chunk_fails_the_crc_check_with_1330() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 8192);
    rig.start(&start_request(&app, 512, false)).unwrap();
    for index in 1..=16 {
        let mut chunk = chunk_of(&app, 0, 512, index);
        if index == 7 {
            chunk.data[100] ^= 0x10;
        }
        assert_eq!(rig.send_chunk(&chunk).0, ChunkOutcome::Written);
    }
    let e = rig.finish().unwrap_err();
    assert_eq!(e.code, -1330);
    rig.rx.cancel(&mut rig.device, false).unwrap();
    assert_eq!(app_version(&rig.reboot()), Some(3));
}

#[test]
fn a_file_not_matching_its_sha256_fails_at_commit_with_1331() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 8192);
    // The cloud announces another file's hash: every module check passes, the final SHA-256
    // comparison of the resumable transfer does not.
    let request = UpdateStart {
        file_sha256: Some(sha256(b"another file")),
        ..start_request(&app, 512, true)
    };
    rig.start(&request).unwrap();
    rig.send_all(&app, 0, 512, 2_000);
    assert!(rig.stored_state().is_some());
    assert!(matches!(rig.finish(), Ok(FinishOutcome::Validated(_))));
    let e = rig.rx.commit(&mut rig.device).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (-1331, "Resumed update failed")
    );
    assert!(!rig.rx.is_running());
    assert!(rig.stored_state().is_none(), "state cleared");
    assert!(rig.device.pending_slots().unwrap().is_empty());
    assert_eq!(rig.events().last(), Some(&OtaEvent::Failed { code: -1331 }));
    assert_eq!(app_version(&rig.reboot()), Some(3));
}

#[test]
fn an_incomplete_transfer_is_refused_with_240_and_stays_resumable() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 8192);
    rig.start(&start_request(&app, 512, true)).unwrap();
    for index in 1..=10 {
        rig.send(&app, 0, 512, index);
    }
    let e = rig.finish().unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (-240, "Protocol error"));
    assert!(e.detail.contains("5120 of 8192"), "{e}");
    rig.rx.cancel(&mut rig.device, false).unwrap();
    assert_eq!(rig.events().last(), Some(&OtaEvent::Failed { code: -240 }));
    let accepted = rig.start(&start_request(&app, 512, true)).unwrap();
    assert_eq!(accepted.resume_offset, 5120);
}

#[test]
fn finish_without_a_running_update_is_an_invalid_state() {
    let mut rig = Rig::boron();
    assert_eq!(rig.finish().unwrap_err().code, -210);
    assert_eq!(rig.rx.commit(&mut rig.device).unwrap_err().code, -210);
}

#[test]
fn update_finish_with_cancel_update_ends_the_transfer() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 8192);
    rig.start(&start_request(&app, 512, true)).unwrap();
    for index in 1..=4 {
        rig.send(&app, 0, 512, index);
    }
    let cancel = UpdateFinish {
        cancel: true,
        discard_data: false,
    };
    assert_eq!(
        rig.rx.finish(rig.now, &mut rig.device, &cancel),
        Ok(FinishOutcome::Cancelled)
    );
    assert!(!rig.rx.is_running());
    assert_eq!(
        rig.stored_state().unwrap().current().unwrap().partial_size,
        2048,
        "cancel syncs the state"
    );
    // With Discard-Data the state goes too.
    rig.start(&start_request(&app, 512, true)).unwrap();
    let discard = UpdateFinish {
        cancel: true,
        discard_data: true,
    };
    rig.rx.finish(rig.now, &mut rig.device, &discard).unwrap();
    assert!(rig.stored_state().is_none());
    assert_eq!(
        rig.start(&start_request(&app, 512, true))
            .unwrap()
            .resume_offset,
        0
    );
}

#[test]
fn an_app_needing_a_newer_device_os_is_accepted_and_boots_into_safe_mode() {
    let mut rig = Rig::boron();
    let needs_newer = Versions {
        system_part: 6300,
        product_version: 4,
        ..Versions::BASELINE
    };
    let app = rig.app(&needs_newer, 8192);
    let stats = complete_update(&mut rig, &app, 512, true);
    assert_eq!(stats.recv_chunks, 16);
    let report = rig.reboot();
    assert!(
        matches!(
            report.state,
            BootState::SafeMode(SafeModeReason::UserPartDependencyUnmet { needed: 6300, .. })
        ),
        "{:?}",
        report.state
    );
}

#[test]
fn a_system_part_needing_a_newer_bootloader_is_refused_with_1340() {
    let mut rig = Rig::boron();
    let board = rig.board.clone();
    let set = FirmwareSet::new(&board, sizes(), SEED);
    let needs_newer_bootloader = Versions {
        bootloader: 3200,
        system_part: 6201,
        ..Versions::BASELINE
    };
    let system = set
        .module(RegionKind::SystemPart, &needs_newer_bootloader, 16 * 1024)
        .unwrap();
    rig.start(&start_request(&system, 1024, false)).unwrap();
    rig.send_all(&system, 0, 1024, 20);
    let e = rig.finish().unwrap_err();
    assert_eq!(e.code, -1340, "{e}");
    assert!(e.detail.contains("version 3200"), "{e}");
    // The same system part against the installed bootloader passes.
    let fine = set
        .module(
            RegionKind::SystemPart,
            &Versions {
                system_part: 6201,
                ..Versions::BASELINE
            },
            16 * 1024,
        )
        .unwrap();
    let stats = complete_update(&mut rig, &fine, 1024, false);
    assert_eq!(stats.recv_chunks, 16);
    let report = rig.reboot();
    assert_eq!(report.valid_version(RegionKind::SystemPart), Some(6201));
    assert_eq!(report.state, BootState::Running);
}

// ----- resumption -------------------------------------------------------------------------

#[test]
fn a_link_cut_resumes_at_the_persisted_offset_even_with_another_chunk_size() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 24 * 1024);
    rig.start(&start_request(&app, 512, true)).unwrap();
    // 20 chunks in order, then 22 and 23 beyond a gap at 21.
    for index in (1..=20).chain([22, 23]) {
        rig.wait(100);
        rig.send(&app, 0, 512, index);
    }
    let progress = rig.rx.progress().unwrap();
    assert_eq!(progress.contiguous_bytes, 20 * 512);
    assert_eq!(
        progress.synced_bytes, None,
        "under 30 s: nothing synced yet"
    );
    // The link goes: the connection layer cancels (Device OS's FirmwareUpdate::reset).
    rig.rx.cancel(&mut rig.device, false).unwrap();
    let file = rig.stored_state().expect("state synced on cancel");
    let record = file.current().unwrap();
    assert_eq!(record.partial_size, 20 * 512);
    assert_eq!(record.file_size, app.len() as u32);
    assert_eq!(record.file_hash, sha256(&app));
    assert_eq!(record.partial_hash, sha256(&app[..20 * 512]));

    // Reconnected: a new receiver (as after a reconnect), the same file in 1024-byte chunks.
    rig.rx = OtaReceiver::new(OtaConfig::default());
    rig.wait(5_000);
    let accepted = rig.start(&start_request(&app, 1024, true)).unwrap();
    assert_eq!(
        accepted,
        StartAccepted {
            window_size: 128,
            resume_offset: 10240
        }
    );
    assert!(
        rig.device.pending_slots().unwrap().is_empty(),
        "nothing staged is lost by resuming"
    );
    let acks = rig.send_all(&app, 10240, 1024, 20);
    assert_eq!(acks.last().unwrap().cumulative, 14);
    let FinishOutcome::Validated(stats) = rig.finish().unwrap() else {
        panic!()
    };
    assert_eq!(stats.recv_chunks, 14);
    rig.rx.commit(&mut rig.device).unwrap();
    assert_eq!(app_version(&rig.reboot()), Some(4));
}

#[test]
fn a_transfer_without_file_sha256_or_with_discard_data_is_not_resumable() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 8192);
    rig.start(&start_request(&app, 512, false)).unwrap();
    for index in 1..=8 {
        rig.send(&app, 0, 512, index);
    }
    assert!(!rig.rx.progress().unwrap().resumable);
    rig.rx.cancel(&mut rig.device, false).unwrap();
    assert!(rig.stored_state().is_none());
    assert_eq!(
        rig.start(&start_request(&app, 512, true))
            .unwrap()
            .resume_offset,
        0
    );

    for index in 1..=8 {
        rig.send(&app, 0, 512, index);
    }
    rig.rx.cancel(&mut rig.device, false).unwrap();
    assert!(rig.stored_state().is_some());
    let discard = UpdateStart {
        discard_data: true,
        ..start_request(&app, 512, true)
    };
    assert_eq!(rig.start(&discard).unwrap().resume_offset, 0);
    assert!(
        rig.stored_state().is_none(),
        "Discard-Data clears the state"
    );
}

#[test]
fn the_resume_state_is_synced_at_most_every_30_s_in_device_os_records() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 64 * 1024);
    rig.start(&start_request(&app, 512, true)).unwrap();
    let mut synced = Vec::new();
    for index in 1..=128u32 {
        rig.wait(500);
        rig.send(&app, 0, 512, index);
        if let Some(at) = rig.rx.progress().unwrap().synced_bytes {
            if synced.last() != Some(&at) {
                synced.push(at);
            }
        }
    }
    // The first chunk arms the 30 s timer; chunks come every 0.5 s.
    assert_eq!(synced, vec![61 * 512, 121 * 512]);
    let file = rig.stored_state().unwrap();
    assert_eq!(&file.as_bytes()[..4], &72u32.to_le_bytes());
    // One record per advance, 56 to a 4 KiB block: rewritten at advances 57 and 113.
    assert_eq!(file.record_count(), 9);
    let record = file.current().unwrap();
    assert_eq!(record.partial_size, 121 * 512);
    assert_eq!(record.partial_hash, sha256(&app[..121 * 512]));
    // The idle loop syncs the rest 30 s after the last sync if nothing ends the transfer.
    let deadline = rig.rx.poll_timeout().unwrap();
    rig.now = deadline;
    assert_eq!(rig.rx.handle_timeout(rig.now, &mut rig.device), None);
    assert_eq!(
        rig.rx.progress().unwrap().synced_bytes,
        Some(app.len() as u32)
    );
}

#[test]
fn an_identical_file_sent_again_after_success_resumes_at_its_end() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 8192);
    complete_update(&mut rig, &app, 512, true);
    assert_eq!(app_version(&rig.reboot()), Some(4));
    assert!(
        rig.stored_state().is_some(),
        "the state outlives a successful update"
    );

    let accepted = rig.start(&start_request(&app, 512, true)).unwrap();
    assert_eq!(accepted.resume_offset, app.len() as u32);
    assert_eq!(rig.rx.progress().unwrap().chunk_count, 0);
    assert!(
        matches!(rig.send(&app, 0, 512, 1).0, ChunkOutcome::Rejected(_)),
        "no chunk left to send"
    );
    rig.start(&start_request(&app, 512, true)).unwrap();
    let FinishOutcome::Validated(stats) = rig.finish().unwrap() else {
        panic!()
    };
    assert_eq!(stats, FinishStats::default());
    // Discard-Data at finish removes the state after the commit.
    rig.rx
        .finish(
            rig.now,
            &mut rig.device,
            &UpdateFinish {
                cancel: false,
                discard_data: true,
            },
        )
        .unwrap();
    rig.rx.commit(&mut rig.device).unwrap();
    assert!(rig.stored_state().is_none());
    assert_eq!(app_version(&rig.reboot()), Some(4));
    assert_eq!(
        rig.start(&start_request(&app, 512, true))
            .unwrap()
            .resume_offset,
        0
    );
}

#[test]
fn a_bad_chunk_written_beyond_the_synced_prefix_is_caught_after_resuming() {
    // Device OS does not erase when it resumes: bytes written beyond the resumed prefix by the
    // earlier attempt stay, and rewriting them can only clear bits (NOR). A chunk that arrived
    // corrupted out of order in the first attempt therefore spoils the file; validation
    // catches it and the next attempt starts over.
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 8192);
    rig.start(&start_request(&app, 512, true)).unwrap();
    for index in 1..=4 {
        rig.send(&app, 0, 512, index);
    }
    let mut bad = chunk_of(&app, 0, 512, 10);
    bad.data.iter_mut().for_each(|b| *b = !*b);
    assert_eq!(rig.send_chunk(&bad).0, ChunkOutcome::Written);
    rig.rx.cancel(&mut rig.device, false).unwrap();

    let accepted = rig.start(&start_request(&app, 512, true)).unwrap();
    assert_eq!(accepted.resume_offset, 2048);
    rig.send_all(&app, 2048, 512, 20);
    let e = rig.finish().unwrap_err();
    assert_eq!(e.code, -1330, "{e}");
    rig.rx.cancel(&mut rig.device, false).unwrap();
    assert_eq!(
        rig.start(&start_request(&app, 512, true))
            .unwrap()
            .resume_offset,
        0
    );
    rig.send_all(&app, 0, 512, 20);
    rig.finish().unwrap();
    rig.rx.commit(&mut rig.device).unwrap();
    assert_eq!(app_version(&rig.reboot()), Some(4));
}

// ----- timeouts ---------------------------------------------------------------------------

#[test]
fn three_hundred_seconds_without_a_chunk_cancel_the_update() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 8192);
    rig.start(&start_request(&app, 512, true)).unwrap();
    rig.wait(10);
    rig.send(&app, 0, 512, 1);
    rig.send(&app, 0, 512, 2);
    let last = rig.now;
    // The earliest deadline is the idle-loop sync of the resume state, 30 s after chunk 1.
    assert_eq!(rig.rx.poll_timeout(), Some(last + Duration::from_secs(30)));
    assert_eq!(
        rig.rx
            .handle_timeout(last + Duration::from_secs(30), &mut rig.device),
        None
    );
    assert_eq!(rig.rx.progress().unwrap().synced_bytes, Some(1024));
    assert_eq!(rig.rx.poll_timeout(), Some(last + Duration::from_secs(300)));
    assert_eq!(
        rig.rx
            .handle_timeout(last + Duration::from_millis(299_999), &mut rig.device),
        None
    );
    let e = rig
        .rx
        .handle_timeout(last + Duration::from_secs(300), &mut rig.device)
        .expect("timed out");
    assert_eq!(e.code, -160);
    assert!(!rig.rx.is_running());
    assert_eq!(rig.events().last(), Some(&OtaEvent::Failed { code: -160 }));
    assert_eq!(
        rig.stored_state().unwrap().current().unwrap().partial_size,
        1024,
        "the cancel syncs the resume state"
    );

    // No chunk at all: 300 s after the start.
    rig.start(&start_request(&app, 512, true)).unwrap();
    let started = rig.now;
    assert!(rig
        .rx
        .handle_timeout(started + Duration::from_secs(300), &mut rig.device)
        .is_some());

    // Still counting while the 2.04 waits for its ACK.
    complete_without_commit(&mut rig, &app);
    let last = rig.now;
    assert!(rig
        .rx
        .handle_timeout(last + Duration::from_secs(300), &mut rig.device)
        .is_some());
    assert!(rig.device.pending_slots().unwrap().is_empty());
}

fn complete_without_commit(rig: &mut Rig, app: &[u8]) {
    let accepted = rig.start(&start_request(app, 512, true)).unwrap();
    rig.send_all(app, accepted.resume_offset, 512, 20);
    assert!(matches!(rig.finish(), Ok(FinishOutcome::Validated(_))));
}

// ----- power loss -------------------------------------------------------------------------

/// What one attempt did before the power went.
struct CutRun {
    /// The resume state's partial size known to be synced before the call the power cut hit.
    synced: u32,
    /// The contiguous bytes that call had received: it may have synced up to here (a cut
    /// after the store write completes).
    reached: u32,
    /// `commit` had been called.
    commit_called: bool,
}

/// Runs a transfer (chunks 2 s apart so that the state syncs) until the scheduled cut.
fn transfer_until_cut(rig: &mut Rig, app: &[u8]) -> Option<CutRun> {
    let mut synced = rig
        .stored_state()
        .and_then(|f| f.current().ok())
        .map_or(0, |r| r.partial_size);
    let accepted = match rig.start(&start_request(app, 512, true)) {
        Ok(a) => a,
        Err(e) if e.is_power_loss() => {
            return Some(CutRun {
                synced,
                reached: synced,
                commit_called: false,
            })
        }
        Err(e) => panic!("start: {e}"),
    };
    let count = (app.len() as u32 - accepted.resume_offset).div_ceil(512);
    for index in 1..=count {
        rig.wait(2_000);
        if let Some(s) = rig.rx.progress().and_then(|p| p.synced_bytes) {
            synced = s;
        }
        match rig.send(app, accepted.resume_offset, 512, index).0 {
            ChunkOutcome::Written => {}
            ChunkOutcome::PowerLost => {
                assert!(!rig.rx.is_running(), "RAM is gone");
                return Some(CutRun {
                    synced,
                    reached: (accepted.resume_offset + index * 512).min(app.len() as u32),
                    commit_called: false,
                });
            }
            other => panic!("chunk {index}: {other:?}"),
        }
    }
    if let Some(s) = rig.rx.progress().and_then(|p| p.synced_bytes) {
        synced = s;
    }
    match rig.finish() {
        Ok(FinishOutcome::Validated(_)) => {}
        Err(e) if e.is_power_loss() => {
            return Some(CutRun {
                synced,
                reached: app.len() as u32,
                commit_called: false,
            })
        }
        other => panic!("finish: {other:?}"),
    }
    match rig.rx.commit(&mut rig.device) {
        Ok(()) => None,
        Err(e) if e.is_power_loss() => Some(CutRun {
            synced,
            reached: app.len() as u32,
            commit_called: true,
        }),
        Err(e) => panic!("commit: {e}"),
    }
}

#[test]
fn a_power_cut_mid_download_keeps_v3_and_the_next_attempt_resumes_at_the_last_sync() {
    let mut rig = Rig::boron();
    let app = rig.app(&v4(), 24 * 1024);
    // Count the flash operations of a clean transfer to cut at chunk 40 of 48.
    let mut clean = Rig::boron();
    let before = clean.device.flash().op_count();
    clean.start(&start_request(&app, 512, true)).unwrap();
    for index in 1..40 {
        clean.wait(2_000);
        clean.send(&app, 0, 512, index);
    }
    // `op_count` is the number the next operation gets: chunk 40's program.
    let cut_at = clean.device.flash().op_count();
    assert!(cut_at > before);

    rig.device.schedule_cut(cut_at, CutMode::Torn);
    let run = transfer_until_cut(&mut rig, &app).expect("the power went");
    assert!(!run.commit_called);
    // Synced every 30 s with a chunk every 2 s: at chunk 16 and chunk 31; the cut hit the
    // write of chunk 40, before any state update.
    assert_eq!(run.synced, 31 * 512);
    assert_eq!(run.reached, 40 * 512);

    rig.device.power_on();
    let report = rig.reboot();
    assert_eq!(report.state, BootState::Running);
    assert_eq!(app_version(&report), Some(3), "the old app runs");
    assert!(report.applied.is_empty());

    let accepted = rig.start(&start_request(&app, 512, true)).unwrap();
    assert_eq!(accepted.resume_offset, run.synced);
    rig.send_all(&app, accepted.resume_offset, 512, 20);
    rig.finish().unwrap();
    rig.rx.commit(&mut rig.device).unwrap();
    assert_eq!(app_version(&rig.reboot()), Some(4));
}

#[test]
fn a_power_cut_at_any_flash_operation_of_an_update_leaves_a_bootable_device_that_can_retry() {
    let app = Rig::boron().app(&v4(), 12 * 1024);
    let mut clean = Rig::boron();
    let first = clean.device.flash().op_count();
    assert!(transfer_until_cut(&mut clean, &app).is_none());
    let last = clean.device.flash().op_count() - 1;
    assert!(last - first > 24, "erase, 24 chunks, syncs, commit");

    let base = Rig::boron();
    let (mut runs, mut resumed, mut applied_at_cut) = (0, 0, 0);
    for op in first..=last {
        for mode in CutMode::ALL {
            let mut rig = Rig {
                board: base.board.clone(),
                device: base.device.clone(),
                rx: OtaReceiver::new(OtaConfig::default()),
                now: base.now,
            };
            rig.device.schedule_cut(op, mode);
            let run = transfer_until_cut(&mut rig, &app)
                .unwrap_or_else(|| panic!("op {op} {mode:?}: no cut"));
            rig.device.power_on();
            let report = rig.reboot();
            assert_eq!(report.state, BootState::Running, "op {op} {mode:?}");
            let version = app_version(&report);
            runs += 1;
            if version == Some(4) {
                applied_at_cut += 1;
            }
            if run.commit_called {
                assert!(
                    matches!(version, Some(3) | Some(4)),
                    "op {op} {mode:?}: {version:?}"
                );
            } else {
                assert_eq!(version, Some(3), "op {op} {mode:?}: nothing was committed");
            }
            // Retry: resumes at the last sync (or the one the cut call completed), then
            // completes.
            let accepted = rig.start(&start_request(&app, 512, true)).unwrap();
            assert!(
                (run.synced..=run.reached).contains(&accepted.resume_offset),
                "op {op} {mode:?}: resumed at {} after syncing {}..={}",
                accepted.resume_offset,
                run.synced,
                run.reached
            );
            if accepted.resume_offset > 0 {
                resumed += 1;
            }
            rig.send_all(&app, accepted.resume_offset, 512, 20);
            rig.finish()
                .unwrap_or_else(|e| panic!("op {op} {mode:?}: finish {e}"));
            rig.rx.commit(&mut rig.device).unwrap();
            assert_eq!(app_version(&rig.reboot()), Some(4), "op {op} {mode:?}");
        }
    }
    // The sweep covers cuts before any sync (restart at 0), after one (resume), and after the
    // commit point (the update applied at the next boot).
    assert_eq!(runs, 3 * (last - first + 1));
    assert!(resumed > 0 && resumed < runs, "{resumed} of {runs} resumed");
    assert!(applied_at_cut > 0, "no cut after the commit point");
    println!("{runs} cuts, {resumed} resumed, {applied_at_cut} applied at the cut");
}
