//! Nonsense from an authenticated cloud never crashes the emulated device: mutated and random
//! CoAP messages (the capture's cloud side with bytes flipped, cut or appended) are counted,
//! answered or turned into a reconnection, and the device ends up connected again.

mod device_os_support;

use std::time::Duration;

use device_os_support::*;
use emulator::os::DeviceEvent;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Every CoAP message the capture's cloud sent (plaintexts of its records), and a few requests
/// it did not: a describe request, a KeyChange, a function call, a server Hello, a ping.
fn cloud_messages() -> Vec<Vec<u8>> {
    let mut corpus: Vec<Vec<u8>> = jsonl("records.jsonl")
        .into_iter()
        .filter(|r| r["dir"] == "cloud_to_device" && r["real_content_type"] == 23)
        .filter_map(|r| hex::decode(r["plaintext_hex"].as_str()?).ok())
        .collect();
    corpus.extend([
        vec![0x41, 0x01, 0x02, 0x40, 0x21, 0xB1, b'd', 0x41, 0x01],
        vec![0x41, 0x01, 0x02, 0x41, 0x22, 0xB1, b'd', 0x41, 0x02],
        vec![0x40, 0x03, 0x02, 0x42, 0xB1, b'k', 0xFF, 0x01],
        vec![
            0x41, 0x02, 0x02, 0x43, 0x23, 0xB1, b'f', 0x03, b'r', b'u', b'n', 0xFF, b'x',
        ],
        vec![0x40, 0x02, 0x02, 0x44, 0xB1, b'h', 0xFF, 0, 0, 0, 0],
        vec![0x40, 0x00, 0x02, 0x45],
    ]);
    corpus
}

fn mutate(rng: &mut ChaCha8Rng, base: &[u8]) -> Vec<u8> {
    let mut m = base.to_vec();
    match rng.next_u32() % 5 {
        0 if !m.is_empty() => {
            let i = rng.next_u32() as usize % m.len();
            m[i] ^= 1 << (rng.next_u32() % 8);
        }
        1 => m.truncate(rng.next_u32() as usize % (m.len() + 1)),
        2 => m.extend((0..rng.next_u32() % 16).map(|_| rng.next_u32() as u8)),
        3 if m.len() > 4 => {
            let i = 4 + rng.next_u32() as usize % (m.len() - 4);
            m[i] = rng.next_u32() as u8;
        }
        _ => {
            m = (0..rng.next_u32() % 40)
                .map(|_| rng.next_u32() as u8)
                .collect()
        }
    }
    m
}

#[test]
fn mutated_cloud_messages_never_crash_the_device() {
    let mut sim = Sim::boron();
    sim.connect();
    let corpus = cloud_messages();
    assert!(corpus.len() > 20);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for round in 0..400 {
        let base = &corpus[rng.next_u32() as usize % corpus.len()];
        let message = mutate(&mut rng, base);
        if let Some(h) = sim.cloud.connection() {
            let now = sim.now;
            let _ = sim.cloud.server.send_application_data(now, h, &message);
        }
        sim.run_for(Duration::from_millis(if round % 50 == 0 {
            2000
        } else {
            20
        }));
    }
    // Quiet again: the device is (or gets) connected.
    sim.run_for(Duration::from_secs(400));
    let status = sim.device.status();
    assert!(status.powered);
    assert!(
        status.connected,
        "{:#?}",
        sim.trace.iter().rev().take(20).collect::<Vec<_>>()
    );
    assert!(status.malformed > 0);
    assert!(sim
        .trace
        .iter()
        .any(|(_, e)| matches!(e, DeviceEvent::Connected { .. })));
}
