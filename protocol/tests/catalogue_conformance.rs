//! Conformance with a real Device OS 6.2.0 session: every decrypted CoAP message of
//! `tests/vectors/wire/coap.jsonl` (copied from the shared wire vectors, see its README) decodes
//! into the catalogue's types and re-emits identical bytes.
//!
//! The raw CoAP bytes are the record plaintexts of `records.jsonl`; `coap.jsonl` lists the same
//! messages field by field, and both views are checked against each other.

use protocol::coap::{CoapOption, Code, Message, MessageType};
use protocol::message::{
    ApplicationDescribe, Body, DescribeFlags, EventScope, FinishStats, HelloFlags, ParticleMessage,
    SystemDescribe, TimeResponse, UpdateAck, UpdateStartResponse, CONTENT_FORMAT_OCTET_STREAM,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

struct Vector {
    record: u64,
    label: String,
    json: Value,
    bytes: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/wire");
    let records = std::fs::read_to_string(format!("{dir}/records.jsonl")).expect("records.jsonl");
    let plaintexts: std::collections::HashMap<u64, String> = records
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|r| {
            Some((
                r["n"].as_u64()?,
                r.get("plaintext_hex")?.as_str()?.to_owned(),
            ))
        })
        .collect();
    let coap = std::fs::read_to_string(format!("{dir}/coap.jsonl")).expect("coap.jsonl");
    coap.lines()
        .map(|l| {
            let json: Value = serde_json::from_str(l).unwrap();
            let record = json["record"].as_u64().unwrap();
            Vector {
                record,
                label: json["label"].as_str().unwrap().to_owned(),
                bytes: hex::decode(&plaintexts[&record]).unwrap(),
                json,
            }
        })
        .collect()
}

fn kind(name: &str) -> MessageType {
    match name {
        "CON" => MessageType::Confirmable,
        "NON" => MessageType::NonConfirmable,
        "ACK" => MessageType::Acknowledgement,
        "RST" => MessageType::Reset,
        other => panic!("unknown type {other}"),
    }
}

/// Builds the CoAP message from the field-by-field listing alone.
fn message_from_listing(json: &Value) -> Message {
    Message {
        kind: kind(json["type"].as_str().unwrap()),
        code: Code(json["code_byte"].as_u64().unwrap() as u8),
        message_id: json["message_id"].as_u64().unwrap() as u16,
        token: hex::decode(json["token_hex"].as_str().unwrap()).unwrap(),
        options: json["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                CoapOption::new(
                    o[0].as_u64().unwrap() as u16,
                    hex::decode(o[1].as_str().unwrap()).unwrap(),
                )
            })
            .collect(),
        payload: hex::decode(json["payload_hex"].as_str().unwrap()).unwrap(),
    }
}

#[test]
fn every_message_of_the_session_is_in_the_vectors() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 49);
    assert!(vectors.iter().all(|v| !v.bytes.is_empty()));
}

#[test]
fn every_captured_message_decodes_to_its_listed_fields() {
    for v in vectors() {
        let message = Message::parse(&v.bytes)
            .unwrap_or_else(|e| panic!("record {} ({}): {e}", v.record, v.label));
        assert_eq!(
            message,
            message_from_listing(&v.json),
            "record {}",
            v.record
        );
        assert_eq!(message.emit().unwrap(), v.bytes, "record {}", v.record);
    }
}

#[test]
fn every_captured_message_round_trips_through_the_catalogue() {
    for v in vectors() {
        let typed = ParticleMessage::parse(&v.bytes)
            .unwrap_or_else(|e| panic!("record {} ({}): {e}", v.record, v.label));
        assert!(
            !matches!(typed.body, Body::Other(_)),
            "record {} ({}) is not typed",
            v.record,
            v.label
        );
        assert_eq!(
            typed.emit().unwrap(),
            v.bytes,
            "record {} ({})",
            v.record,
            v.label
        );
    }
}

#[test]
fn every_label_matches_the_catalogue_type() {
    let mut image = vec![0u8; 5000];
    let mut chunks_seen = 0;
    for v in vectors() {
        let m = ParticleMessage::parse(&v.bytes).unwrap();
        let label = v.label.as_str();
        match &m.body {
            Body::Hello(hello) => {
                assert_eq!(label, "Hello");
                assert_eq!(hello.product_id, 3);
                assert_eq!(hello.product_version, 0xFFFF);
                assert_eq!(hello.flags, HelloFlags(0x00B6));
                assert!(hello.flags.contains(HelloFlags::OTA_PROTOCOL_V3));
                assert!(!hello.flags.contains(HelloFlags::OTA_UPGRADE_SUCCESSFUL));
                assert_eq!(hello.platform_id, 13);
                assert_eq!(hex::encode(hello.device_id), "a6e8c393e942e9ea3eb89d15");
                let session = v.json["session"].as_u64().unwrap();
                assert_eq!(hello.system_version, if session == 1 { 6200 } else { 6201 });
                assert_eq!(hello.max_message_size, 1152);
                assert_eq!(hello.max_binary_size, 10_485_760);
                assert_eq!(hello.ota_chunk_size, 512);
                assert!(m.token.is_empty());
            }
            Body::Describe(d) if d.flags == DescribeFlags::SYSTEM => {
                assert_eq!(label, "Describe (flags 0x01)");
                assert_eq!(d.content_format, Some(CONTENT_FORMAT_OCTET_STREAM));
                assert_eq!(m.token.len(), 1);
                let system = SystemDescribe::parse(&d.payload).unwrap();
                assert!(!system.firmware_modules.is_empty());
                assert_eq!(system.emit(), d.payload, "protobuf re-encodes identically");
            }
            Body::Describe(d) => {
                assert_eq!(label, "Describe (flags 0x02)");
                assert_eq!(d.flags, DescribeFlags::APPLICATION);
                assert_eq!(d.content_format, None);
                let app = ApplicationDescribe::parse(&d.payload).unwrap();
                assert_eq!(app, ApplicationDescribe::default());
                assert_eq!(app.emit(), d.payload);
            }
            Body::TimeRequest => assert_eq!(label, "Time request"),
            Body::Event(e) => {
                assert_eq!(label, format!("Event {}", e.name));
                assert_eq!(e.scope, EventScope::Private);
                assert_eq!(e.ttl(), 60);
                let expected: &[u8] = if e.name.ends_with("enabled") {
                    b"true"
                } else {
                    b"false"
                };
                assert_eq!(e.data, expected);
            }
            Body::Subscribe(s) => assert_eq!(label, format!("Subscribe {}", s.filter)),
            Body::UpdateStart(start) => {
                assert_eq!(label, "UpdateStart");
                assert_eq!(start.file_size, 5000);
                assert_eq!(start.chunk_size, 1024);
                assert_eq!(
                    hex::encode(start.file_sha256.unwrap()),
                    "9e738b4f295af2cc1d12fe1ac29674645471fb0623584e390dc1bef879e69de6"
                );
                assert_eq!(start.chunk_count(0), 5);
            }
            Body::UpdateChunk(chunk) => {
                assert!(label.starts_with(&format!("UpdateChunk index {} (", chunk.index)));
                let offset = (chunk.index as usize - 1) * 1024;
                image[offset..offset + chunk.data.len()].copy_from_slice(&chunk.data);
                chunks_seen += 1;
            }
            Body::UpdateAck(ack) => {
                let bitmap = if ack.bitmap.is_empty() {
                    "(empty)".to_owned()
                } else {
                    ack.bitmap
                        .iter()
                        .map(|w| hex::encode(w.to_le_bytes()))
                        .collect()
                };
                assert_eq!(
                    label,
                    format!("UpdateAck chunk-index {} bitmap {bitmap}", ack.cumulative)
                );
            }
            Body::UpdateFinish(finish) => {
                assert_eq!(label, "UpdateFinish");
                assert!(!finish.cancel && !finish.discard_data);
            }
            Body::EmptyAck => assert!(label.starts_with("Empty ACK"), "{label}"),
            Body::Response(r) if label.contains("Window-Size") => {
                let started = UpdateStartResponse::parse(r).unwrap();
                assert_eq!(started.window_size, 128);
                assert_eq!(started.resume_offset, 0);
                assert_eq!(m.kind, MessageType::Confirmable);
                assert_eq!(&started.emit(), r, "2.01 re-emits identically");
            }
            Body::Response(r) if label.contains("JSON stats") => {
                let stats = FinishStats::parse(&r.payload).unwrap();
                assert_eq!(
                    stats,
                    FinishStats {
                        recv_chunks: 5,
                        dup_chunks: 0,
                        ooo_chunks: 1,
                        sent_acks: 4,
                        proc_time: 0
                    }
                );
                assert_eq!(stats.response(), *r);
            }
            Body::Response(r) if label.contains("Time request") => {
                assert_eq!(TimeResponse::parse(r).unwrap().unix_time, None);
                assert_eq!(m.kind, MessageType::Acknowledgement);
            }
            Body::Response(r) => {
                assert!(label.starts_with("ACK 2.0"), "{label}");
                assert!(r.code == Code::CHANGED || r.code == Code::CONTENT);
                assert!(r.options.is_empty() && r.payload.is_empty());
            }
            other => panic!("record {}: unexpected {other:?}", v.record),
        }
    }
    assert_eq!(chunks_seen, 5);
    assert_eq!(
        hex::encode(Sha256::digest(&image)),
        "9e738b4f295af2cc1d12fe1ac29674645471fb0623584e390dc1bef879e69de6",
        "the chunks reassemble into the announced file"
    );
}

#[test]
fn device_ack_bitmaps_match_out_of_order_delivery() {
    // Chunks arrived 1, 2, 4, 3, 5: after 1, 2, 4 the device holds 1-2 and 4.
    assert_eq!(
        UpdateAck::from_received(2, [4]),
        UpdateAck {
            cumulative: 2,
            bitmap: vec![0x0000_0002]
        }
    );
}
