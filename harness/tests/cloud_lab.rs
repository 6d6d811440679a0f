//! Lab-service details of the cloud in virtual time (issue 13).

use std::time::Duration;

use emulator::board::{Board, RegionKind};
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use harness::cloud::{CloudEvent, OtaEventKind};
use harness::testbed::{DeviceSpec, Testbed};

#[test]
fn a_lost_ack_of_an_earlier_event_does_not_hold_a_flash_back() {
    let board = Board::builtin("argon").unwrap();
    let mut bed = Testbed::new(31).unwrap();
    let dev = bed.add_device(&DeviceSpec::new(board.clone(), 3)).unwrap();
    bed.power_on(dev).unwrap();
    bed.run_until("device online", Duration::from_secs(60), |b| {
        b.status(dev).map(|s| s.connected).unwrap_or(false)
    })
    .unwrap();
    // Past the post-connect sequence.
    bed.run_for(Duration::from_secs(10)).unwrap();
    let id = bed.device_id(dev).unwrap();
    let (cloud, device) = (bed.cloud_node(), bed.device_node(dev).unwrap());
    // An event to the device whose ACK is lost (the device's next datagram), then a flash.
    let now = bed.now();
    assert!(bed.cloud_mut().send_event(now, id, "lab/note", "x"));
    bed.net.drop_next(device, cloud, 1);
    let file = FirmwareSet::new(&board, ModuleSizes::default(), 31)
        .module(
            RegionKind::UserPart,
            &Versions {
                product_version: 4,
                ..Versions::BASELINE
            },
            8 * 1024,
        )
        .unwrap();
    let job = bed.flash(dev, file).unwrap();
    bed.run_for(Duration::from_secs(2)).unwrap();
    let started = bed.cloud_events().iter().find_map(|(at, e)| match e {
        CloudEvent::Ota(o) if o.job == job && matches!(o.kind, OtaEventKind::Started { .. }) => {
            Some(*at)
        }
        _ => None,
    });
    // At once, not after the event's retransmission (4 s or more) is acknowledged.
    let started = started.expect("the UpdateStart went out within 2 s");
    assert!(
        started - now < Duration::from_millis(100),
        "{:?}",
        started - now
    );
}
