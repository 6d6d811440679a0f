//! The test-control protocol end to end over a real pseudo-terminal: an emulated board (device
//! over real UDP to a local cloud, its port on a pty) driven through `BoardPort`, the host side
//! the board target uses for physical boards.

use std::sync::Arc;
use std::time::Duration;

use emulator::firmware::{ModuleSizes, Versions};
use harness::board::emulated::{EmulatedBoard, EmulatedBoardSpec};
use harness::board::port::{BoardPort, PortError, PortLocator};
use harness::board::protocol::{
    BoardEvent, BoardLine, Command, ReplyBody, SleepMode, SleepNetwork,
};
use harness::cloud::{Cloud, CloudConfig};
use harness::net::udp::UdpNode;
use harness::testbed::CloudNode;
use p256::ecdsa::SigningKey;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

const ID: [u8; 12] = [0x0a; 12];
const LIMIT: Duration = Duration::from_secs(5);

async fn board() -> (Arc<UdpNode<CloudNode>>, EmulatedBoard) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let server_key = SigningKey::random(&mut rng);
    let device_key = SigningKey::random(&mut rng);
    let mut cloud = Cloud::new(CloudConfig::new(server_key.clone()), 5);
    cloud.register_device(ID, *device_key.verifying_key());
    let cloud = UdpNode::server(CloudNode::new(cloud), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let spec = EmulatedBoardSpec {
        board: "boron".into(),
        device_id: ID,
        key: device_key,
        server: cloud.local_addr(),
        server_key: *server_key.verifying_key(),
        versions: Versions::BASELINE,
        sizes: ModuleSizes::default(),
        seed: 5,
    };
    let board = EmulatedBoard::start(&spec).await.unwrap();
    (Arc::new(cloud), board)
}

async fn status(port: &mut BoardPort) -> harness::board::protocol::BoardStatus {
    match port.request(Command::Status, LIMIT).await.unwrap() {
        ReplyBody::Status(s) => s,
        other => panic!("status answered {other:?}"),
    }
}

/// Polls until a line matching `want` arrives (at most `LIMIT`).
async fn wait_line(port: &mut BoardPort, want: impl Fn(&BoardLine) -> bool) -> BoardLine {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(l) = port.take_lines().into_iter().find(|l| want(l)) {
            return l;
        }
        assert!(tokio::time::Instant::now() < deadline, "no matching line");
        port.poll(Duration::from_millis(50)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulated_board_answers_the_protocol_over_a_pty() {
    let (_cloud, board) = board().await;
    let mut port = BoardPort::new(PortLocator::Path(board.path().to_string()));
    port.reopen(LIMIT).await.unwrap();

    match port.request(Command::Hello, LIMIT).await.unwrap() {
        ReplyBody::Hello {
            version,
            device_id,
            platform_id,
        } => {
            assert_eq!(version, 1);
            assert_eq!(device_id, hex::encode(ID));
            assert_eq!(platform_id, 13);
        }
        other => panic!("hello answered {other:?}"),
    }
    // It connects to the cloud: cloud_status 8 arrives, and status says online.
    wait_line(&mut port, |l| {
        matches!(l, BoardLine::Event(BoardEvent::CloudStatus(8)))
    })
    .await;
    let s = status(&mut port).await;
    assert!(s.online && s.updates_enabled && s.reset_enabled);
    assert_eq!((s.system_version, s.app), (6200, 3));

    port.request(Command::Updates { enabled: false }, LIMIT)
        .await
        .unwrap();
    assert!(!status(&mut port).await.updates_enabled);

    match port.request(Command::Modules, LIMIT).await.unwrap() {
        ReplyBody::Modules(m) => assert!(m
            .iter()
            .any(|m| m.function == "system" && m.version == 6200)),
        other => panic!("modules answered {other:?}"),
    }

    // Device OS refuses HIBERNATE with a duration on the nRF52840: an error reply.
    let refused = port
        .request(
            Command::Sleep {
                mode: SleepMode::Hibernate,
                duration_ms: Some(1000),
                network: SleepNetwork::Off,
            },
            LIMIT,
        )
        .await;
    assert!(
        matches!(refused, Err(PortError::Refused { .. })),
        "{refused:?}"
    );

    // A reset: the reply, then the boot line with reset reason 140 (user), flags back to
    // their defaults.
    port.request(Command::Reset { no_wait: false }, LIMIT)
        .await
        .unwrap();
    let boot = wait_line(&mut port, |l| matches!(l, BoardLine::Boot(_))).await;
    let BoardLine::Boot(boot) = boot else {
        unreachable!()
    };
    assert_eq!((boot.version, boot.reset_reason, boot.app), (1, 140, 3));
    assert!(status(&mut port).await.updates_enabled);

    // A board that stops answering: no reply in time.
    board.set_mute(true);
    let silent = port
        .request(Command::Status, Duration::from_millis(300))
        .await;
    assert!(
        matches!(silent, Err(PortError::NoAnswer { .. })),
        "{silent:?}"
    );
}
