//! The paced OTA sender on the issue's slow link, in virtual time (issue 13): 1 MiB over
//! 20 KB/s with a 2 s queue and 5 % loss each way. `hil bench pacing` prints the same figures
//! beside those of the unpaced sender (about 45 datagrams per chunk and 22 % of the link).

use harness::net::pacing::{measure, SlowLink};

#[test]
fn paced_sender_sends_at_most_1_3_datagrams_per_chunk_and_uses_80_percent_of_a_slow_lossy_link() {
    let f = measure(SlowLink::ISSUE, 1024 * 1024, true, 1).unwrap();
    assert_eq!(f.chunks, 2048);
    assert!(f.datagrams_per_chunk() <= 1.3, "{f:?}");
    assert!(f.goodput_share >= 0.8, "{f:?}");
}

#[test]
fn on_an_unconstrained_link_the_paced_sender_sends_each_chunk_once() {
    let link = SlowLink {
        bandwidth: 100_000_000,
        queue: std::time::Duration::ZERO,
        loss: 0.0,
        latency: std::time::Duration::from_millis(20),
    };
    let paced = measure(link, 256 * 1024, true, 2).unwrap();
    let unpaced = measure(link, 256 * 1024, false, 2).unwrap();
    assert_eq!(paced.chunk_datagrams, paced.chunks, "{paced:?}");
    // The same transfer time as the sender of before (the window starts at the device's).
    assert_eq!(paced.seconds, unpaced.seconds, "{paced:?} {unpaced:?}");
}
