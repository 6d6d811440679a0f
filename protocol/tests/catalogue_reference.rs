//! The examples of `reference/particle-protocol.md` §1.5-§1.12 and §2.2, built with the
//! catalogue and compared byte for byte. (The single-message examples — Hello, UpdateStart and
//! its response, UpdateChunk, UpdateAck — are also pinned next to their types.)

use protocol::coap::{Code, MessageType};
use protocol::message::{
    piggybacked, Body, Event, FinishStats, Goodbye, ParticleMessage, Response, Subscribe,
    TimeResponse, UpdateAck, UpdateChunk, UpdateFinish, UpdateStart, UpdateStartResponse,
};

fn msg(kind: MessageType, message_id: u16, token: &[u8], body: Body) -> ParticleMessage {
    ParticleMessage {
        kind,
        message_id,
        token: token.to_vec(),
        body,
    }
}

fn bytes(m: &ParticleMessage) -> Vec<u8> {
    let b = m.emit().unwrap();
    assert_eq!(&ParticleMessage::parse(&b).unwrap(), m, "round trip");
    b
}

#[test]
fn common_first_bytes_match_the_reference() {
    use MessageType::*;
    let cases = [
        (msg(Confirmable, 1, &[], Body::Ping), 0x40),
        (msg(Confirmable, 1, &[7], Body::TimeRequest), 0x41),
        (
            msg(
                NonConfirmable,
                1,
                &[],
                Body::UpdateAck(UpdateAck::from_received(1, [])),
            ),
            0x50,
        ),
        (msg(Acknowledgement, 1, &[], Body::EmptyAck), 0x60),
        (
            msg(
                Acknowledgement,
                1,
                &[7],
                Body::Response(Response::new(Code::CONTENT)),
            ),
            0x61,
        ),
        (msg(Reset, 1, &[], Body::Reset), 0x70),
    ];
    for (m, first) in cases {
        assert_eq!(bytes(&m)[0], first, "{m:?}");
    }
}

#[test]
fn keepalive_ping_is_four_bytes() {
    let ping = msg(MessageType::Confirmable, 0xBEEF, &[], Body::Ping);
    assert_eq!(bytes(&ping), vec![0x40, 0x00, 0xBE, 0xEF]);
}

#[test]
fn time_request_and_its_answer() {
    let request = msg(MessageType::Confirmable, 3, &[0x78], Body::TimeRequest);
    assert_eq!(
        bytes(&request),
        vec![0x41, 0x01, 0x00, 0x03, 0x78, 0xB1, b't']
    );
    let answer = piggybacked(
        &request,
        TimeResponse {
            unix_time: Some(1_700_000_000),
        }
        .emit(),
    );
    assert_eq!(
        bytes(&answer),
        [
            &[0x61, 0x45, 0x00, 0x03, 0x78, 0xFF][..],
            &1_700_000_000u32.to_be_bytes()
        ]
        .concat()
    );
}

#[test]
fn events_at_connect_and_subscriptions() {
    let enabled = msg(
        MessageType::Confirmable,
        4,
        &[],
        Body::Event(Event::new("particle/device/updates/enabled", "true")),
    );
    let expected = [
        &[0x40, 0x02, 0x00, 0x04, 0xB1, b'E', 0x0D, 31 - 13][..],
        b"particle/device/updates/enabled",
        b"\xFFtrue",
    ]
    .concat();
    assert_eq!(bytes(&enabled), expected);
    let subscribe = msg(
        MessageType::Confirmable,
        7,
        &[],
        Body::Subscribe(Subscribe::new("particle")),
    );
    assert_eq!(
        bytes(&subscribe),
        [&[0x40, 0x01, 0x00, 0x07, 0xB1, b'e', 0x08][..], b"particle"].concat()
    );
}

#[test]
fn ota_v3_sequence_summary() {
    // C->D CON POST S [tok] File-Size, File-Sha256, Chunk-Size (sA)
    let start = msg(
        MessageType::Confirmable,
        0x0200,
        &[0x31],
        Body::UpdateStart(UpdateStart {
            file_size: 1500,
            file_sha256: Some([0x11; 32]),
            chunk_size: 512,
            discard_data: false,
            module_function: None,
        }),
    );
    let b = bytes(&start);
    assert_eq!(&b[..7], &[0x41, 0x02, 0x02, 0x00, 0x31, 0xB1, b'S']);
    // D->C ACK 0.00 (sA)
    let ack = msg(MessageType::Acknowledgement, 0x0200, &[], Body::EmptyAck);
    assert_eq!(bytes(&ack), vec![0x60, 0x00, 0x02, 0x00]);
    // D->C CON 2.01 [tok] Window-Size, File-Size=0 (d1)
    let created = msg(
        MessageType::Confirmable,
        1,
        &[0x31],
        Body::Response(
            UpdateStartResponse {
                window_size: 256,
                resume_offset: 0,
            }
            .emit(),
        ),
    );
    assert_eq!(
        bytes(&created),
        vec![0x41, 0x41, 0x00, 0x01, 0x31, 0xE2, 0x06, 0xF8, 0x01, 0x00, 0x40]
    );
    // C->D NON POST C Chunk-Index=1..3 + data
    for index in 1..=3u8 {
        let chunk = msg(
            MessageType::NonConfirmable,
            0x0200 + u16::from(index),
            &[],
            Body::UpdateChunk(UpdateChunk {
                index: u32::from(index),
                data: vec![index; if index == 3 { 476 } else { 512 }],
            }),
        );
        assert_eq!(
            &bytes(&chunk)[..11],
            &[0x50, 0x02, 0x02, index, 0xB1, b'C', 0xE1, 0x06, 0xE9, index, 0xFF]
        );
    }
    // D->C NON POST A Chunk-Index=2 ; later Chunk-Index=3
    for cumulative in [2u8, 3] {
        let ack = msg(
            MessageType::NonConfirmable,
            u16::from(cumulative),
            &[],
            Body::UpdateAck(UpdateAck::from_received(u32::from(cumulative), [])),
        );
        assert_eq!(
            bytes(&ack),
            vec![0x50, 0x02, 0x00, cumulative, 0xB1, b'A', 0xE1, 0x06, 0xE9, cumulative]
        );
    }
    // C->D CON POST F [tok2] (sB)
    let finish = msg(
        MessageType::Confirmable,
        0x0204,
        &[0x32],
        Body::UpdateFinish(UpdateFinish::default()),
    );
    assert_eq!(
        bytes(&finish),
        vec![0x41, 0x02, 0x02, 0x04, 0x32, 0xB1, b'F']
    );
    // D->C CON 2.04 [tok2] {"recv_chunks":3,...} (d2)
    let stats = FinishStats {
        recv_chunks: 3,
        ..FinishStats::default()
    };
    let done = msg(
        MessageType::Confirmable,
        2,
        &[0x32],
        Body::Response(stats.response()),
    );
    let b = bytes(&done);
    assert_eq!(&b[..6], &[0x41, 0x44, 0x00, 0x02, 0x32, 0xFF]);
    assert!(b.ends_with(
        br#"{"recv_chunks":3,"dup_chunks":0,"ooo_chunks":0,"sent_acks":0,"proc_time":0}"#
    ));
}

#[test]
fn goodbye_is_post_x_without_token() {
    let goodbye = msg(
        MessageType::Confirmable,
        9,
        &[],
        Body::Goodbye(Goodbye {
            cloud_reason: Some(2),
            ..Goodbye::default()
        }),
    );
    assert_eq!(
        bytes(&goodbye),
        vec![0x40, 0x02, 0x00, 0x09, 0xB1, b'x', 0xFF, 0x01, 0x02]
    );
}
