//! Conformance with a real Device OS 6.2.0 session (tests/vectors/wire, copied from the shared
//! vectors): every datagram splits into records, every epoch-0 handshake message parses and
//! re-emits identically, the key log gives the key block, and every protected record decrypts to
//! the listed plaintext and re-encrypts to the identical bytes.

use protocol::dtls::crypto::{aad, KeyBlock};
use protocol::dtls::handshake::*;
use protocol::dtls::record::{parse_datagram, ContentType, RecordRepr};
use serde_json::Value;

fn vectors(name: &str) -> String {
    let path = format!("{}/tests/vectors/wire/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn jsonl(name: &str) -> Vec<Value> {
    vectors(name)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// (client_random, master_secret) per handshake, from the NSS key log.
fn keylog() -> Vec<([u8; 32], [u8; 48])> {
    vectors("keys/keylog.txt")
        .lines()
        .filter_map(|l| l.strip_prefix("CLIENT_RANDOM "))
        .map(|l| {
            let mut parts = l.split(' ');
            let cr: [u8; 32] = hex::decode(parts.next().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            let ms: [u8; 48] = hex::decode(parts.next().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            (cr, ms)
        })
        .collect()
}

const CID_LEN: usize = 8;

#[test]
fn every_datagram_splits_into_the_listed_records() {
    let datagrams = jsonl("datagrams.jsonl");
    let records = jsonl("records.jsonl");
    assert_eq!(datagrams.len(), 61);
    let mut all = Vec::new();
    for d in &datagrams {
        let bytes = unhex(&d["hex"]);
        let recs = parse_datagram(&bytes, CID_LEN).unwrap();
        let mut rebuilt = Vec::new();
        for r in &recs {
            r.emit(&mut rebuilt);
            let mut one = Vec::new();
            r.emit(&mut one);
            all.push((
                d["n"].as_u64().unwrap(),
                r.content_type,
                r.epoch,
                r.seq,
                one,
            ));
        }
        assert_eq!(rebuilt, bytes, "datagram {}", d["n"]);
    }
    assert_eq!(all.len(), records.len());
    for (ours, theirs) in all.iter().zip(&records) {
        assert_eq!(ours.0, theirs["datagram"].as_u64().unwrap());
        assert_eq!(
            u64::from(ours.1.to_u8()),
            theirs["content_type"].as_u64().unwrap()
        );
        assert_eq!(u64::from(ours.2), theirs["epoch"].as_u64().unwrap());
        assert_eq!(ours.3, theirs["seq"].as_u64().unwrap());
        assert_eq!(
            ours.4,
            unhex(&theirs["record_hex"]),
            "record {}",
            theirs["n"]
        );
    }
}

#[test]
fn every_epoch0_handshake_message_parses_and_reemits_identically() {
    let mut seen = std::collections::BTreeMap::<u8, usize>::new();
    for r in jsonl("records.jsonl") {
        if r["content_type"] != 22 || r["epoch"] != 0 {
            continue;
        }
        let bytes = unhex(&r["record_hex"]);
        let (rec, _) = RecordRepr::parse(&bytes, CID_LEN).unwrap();
        let frags = FragmentRepr::parse_all(rec.fragment).unwrap();
        assert_eq!(frags.len(), 1, "one unfragmented message per record");
        let f = &frags[0];
        assert_eq!((f.fragment_offset, f.fragment.len()), (0, f.length));
        let listed = &r["handshake"][0];
        assert_eq!(u64::from(f.msg_type), listed["msg_type"].as_u64().unwrap());
        assert_eq!(
            u64::from(f.message_seq),
            listed["message_seq"].as_u64().unwrap()
        );
        *seen.entry(f.msg_type).or_default() += 1;
        let body = f.fragment;
        let mut out = Vec::new();
        match f.msg_type {
            msg_type::CLIENT_HELLO => {
                let m = ClientHello::parse(body).unwrap();
                assert_eq!(m.random.to_vec(), unhex(&listed["random"]));
                assert_eq!(m.cookie, unhex(&listed["cookie"]));
                assert_eq!(
                    m.cipher_suites,
                    vec![
                        TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
                        TLS_EMPTY_RENEGOTIATION_INFO_SCSV
                    ]
                );
                let exts: Vec<(u64, Vec<u8>)> = listed["extensions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| (e[0].as_u64().unwrap(), unhex(&e[1])))
                    .collect();
                let ours: Vec<(u64, Vec<u8>)> = m
                    .extensions
                    .iter()
                    .map(|e| (u64::from(e.typ), e.data.clone()))
                    .collect();
                assert_eq!(ours, exts);
                m.emit(&mut out);
            }
            msg_type::HELLO_VERIFY_REQUEST => {
                let m = HelloVerifyRequest::parse(body).unwrap();
                assert_eq!(m.cookie, unhex(&listed["cookie"]));
                m.emit(&mut out);
            }
            msg_type::SERVER_HELLO => {
                let m = ServerHello::parse(body).unwrap();
                assert_eq!(m.random.to_vec(), unhex(&listed["random"]));
                assert_eq!(m.cipher_suite, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8);
                assert_eq!(
                    find_extension(&m.extensions, ext::CONNECTION_ID),
                    Some(&hex::decode("087b6c8c5626d7bc5e").unwrap()[..])
                );
                m.emit(&mut out);
            }
            msg_type::SERVER_KEY_EXCHANGE => {
                let m = ServerKeyExchange::parse(body).unwrap();
                assert_eq!(
                    (m.named_curve, m.public.len(), m.signature_scheme),
                    (SECP256R1, 65, ECDSA_SHA256)
                );
                m.emit(&mut out);
            }
            msg_type::CERTIFICATE_REQUEST => {
                let m = CertificateRequest::parse(body).unwrap();
                assert!(m.signature_algorithms.contains(&ECDSA_SHA256));
                m.emit(&mut out);
            }
            msg_type::SERVER_HELLO_DONE => assert!(body.is_empty()),
            msg_type::CERTIFICATE => {
                let m = Certificate::parse(body, true).unwrap();
                assert_eq!(
                    m,
                    Certificate::RawPublicKey(
                        hex::decode(vectors_bytes_hex("keys/device_public_key.der")).unwrap()
                    )
                );
                m.emit(&mut out);
            }
            msg_type::CLIENT_KEY_EXCHANGE => {
                let m = ClientKeyExchange::parse(body).unwrap();
                assert_eq!(m.public.len(), 65);
                m.emit(&mut out);
            }
            msg_type::CERTIFICATE_VERIFY => {
                let m = CertificateVerify::parse(body).unwrap();
                assert_eq!(m.signature_scheme, ECDSA_SHA256);
                m.emit(&mut out);
            }
            other => panic!("unexpected epoch-0 handshake message {other}"),
        }
        assert_eq!(out, body, "record {}", r["n"]);
    }
    // Two sessions: 2 ClientHello + HVR + ServerHello.. ServerHelloDone + Certificate.. CertificateVerify each.
    let expected: std::collections::BTreeMap<u8, usize> = [
        (1, 4),
        (2, 2),
        (3, 2),
        (11, 2),
        (12, 2),
        (13, 2),
        (14, 2),
        (15, 2),
        (16, 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, expected);
}

fn vectors_bytes_hex(name: &str) -> String {
    let path = format!("{}/tests/vectors/wire/{name}", env!("CARGO_MANIFEST_DIR"));
    hex::encode(std::fs::read(path).unwrap())
}

#[test]
fn key_block_from_key_log_matches_the_readme() {
    let logs = keylog();
    let server_randoms = [
        "6b09190d49e6ae336f92addffa8990e7bf5418383b60ae6f0b83b45e37b5eb36",
        "6b09191528a95dd3d3ac279c4221eba0f39505e3bfec18dd72f51cf462de5627",
    ];
    let expected = [
        (
            "e354626dbf8bd87bd51c48f3a4b27815",
            "e4f26b3f2955d2920842d2d4f7580215",
            "6d1d7c71",
            "b969a3cc",
        ),
        (
            "cdd74a02c519233732ab1142ab9ce6f8",
            "9a062ef2ddd9e0d1017eef5aa6dd2281",
            "01610538",
            "212ec3e9",
        ),
    ];
    for ((cr, ms), (sr, exp)) in logs.iter().zip(server_randoms.iter().zip(expected)) {
        let sr: [u8; 32] = hex::decode(sr).unwrap().try_into().unwrap();
        let kb = KeyBlock::derive(ms, cr, &sr);
        assert_eq!(hex::encode(kb.client_write_key), exp.0);
        assert_eq!(hex::encode(kb.server_write_key), exp.1);
        assert_eq!(hex::encode(kb.client_write_iv), exp.2);
        assert_eq!(hex::encode(kb.server_write_iv), exp.3);
    }
}

#[test]
fn every_protected_record_decrypts_to_the_listed_plaintext_and_reencrypts_identically() {
    let logs = keylog();
    let records = jsonl("records.jsonl");
    // The server random of each session comes from its ServerHello.
    let mut server_randoms = Vec::new();
    for r in &records {
        if let Some(h) = r["handshake"].as_array() {
            if h[0]["msg_type"] == 2 {
                server_randoms.push(<[u8; 32]>::try_from(unhex(&h[0]["random"])).unwrap());
            }
        }
    }
    let key_blocks: Vec<KeyBlock> = logs
        .iter()
        .zip(&server_randoms)
        .map(|((cr, ms), sr)| KeyBlock::derive(ms, cr, sr))
        .collect();
    let mut session = 0;
    let mut checked = 0;
    let mut cid_records = 0;
    for r in &records {
        if r["handshake"]
            .as_array()
            .is_some_and(|h| h[0]["msg_type"] == 2)
        {
            session = server_randoms
                .iter()
                .position(|s| s.to_vec() == unhex(&r["handshake"][0]["random"]))
                .unwrap();
        }
        if r["protected"] != true {
            continue;
        }
        let bytes = unhex(&r["record_hex"]);
        let (rec, _) = RecordRepr::parse(&bytes, CID_LEN).unwrap();
        let from_client = r["dir"] == "device_to_cloud";
        let (client_write, server_write) = key_blocks[session].ciphers(true);
        let cipher = if from_client {
            &client_write
        } else {
            &server_write
        };
        let (real, plain) = cipher
            .open(rec.content_type, rec.epoch, rec.seq, rec.cid, rec.fragment)
            .unwrap();
        assert_eq!(plain, unhex(&r["plaintext_hex"]), "record {}", r["n"]);
        let listed_real = r["real_content_type"]
            .as_u64()
            .unwrap_or(r["content_type"].as_u64().unwrap());
        assert_eq!(u64::from(real.to_u8()), listed_real);
        // Our AAD construction is the listed one.
        let inner_len = rec.fragment.len() - 16;
        assert_eq!(
            aad(
                rec.epoch,
                rec.seq,
                rec.content_type.to_u8(),
                rec.cid,
                inner_len
            ),
            unhex(&r["aad_hex"])
        );
        // Re-encrypt: identical record bytes (explicit nonce = epoch ‖ seq, zero padding to 16).
        let cid = rec.cid.map(|c| (c, ContentType::Cid));
        assert_eq!(
            cipher.seal(real, rec.epoch, rec.seq, cid, &plain),
            bytes,
            "record {}",
            r["n"]
        );
        // A flipped bit anywhere in the fragment fails the tag check.
        let mut bad = rec.fragment.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(cipher
            .open(rec.content_type, rec.epoch, rec.seq, rec.cid, &bad)
            .is_err());
        checked += 1;
        cid_records += usize::from(rec.content_type == ContentType::Cid);
    }
    assert_eq!((checked, cid_records), (53, 26));
}

/// The transcript rules (ClientHello with cookie onwards, DTLS headers included), the
/// ServerKeyExchange and CertificateVerify signatures and both Finished messages of the capture.
#[test]
fn transcript_signatures_and_finished_of_both_captured_handshakes_verify() {
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::Signature;
    use protocol::dtls::crypto::verify_data;
    use protocol::dtls::keys::verifying_key_from_spki;

    let read = |n: &str| {
        std::fs::read(format!(
            "{}/tests/vectors/wire/{n}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let server_pub = verifying_key_from_spki(&read("keys/server_public_key.der")).unwrap();
    let device_pub = verifying_key_from_spki(&read("keys/device_public_key.der")).unwrap();
    let logs = keylog();
    let mut session = 0usize;
    let mut transcript: Vec<u8> = Vec::new();
    let (mut client_random, mut server_random) = ([0u8; 32], [0u8; 32]);
    let mut finished_seen = 0;
    for r in jsonl("records.jsonl") {
        let msg: Vec<u8> = if r["content_type"] == 22 && r["epoch"] == 0 {
            let bytes = unhex(&r["record_hex"]);
            let (rec, _) = RecordRepr::parse(&bytes, CID_LEN).unwrap();
            rec.fragment.to_vec()
        } else if r["protected"] == true
            && r["real_content_type"]
                .as_u64()
                .unwrap_or(r["content_type"].as_u64().unwrap())
                == 22
        {
            unhex(&r["plaintext_hex"])
        } else {
            continue;
        };
        let (f, _) = FragmentRepr::parse(&msg).unwrap();
        match f.msg_type {
            msg_type::CLIENT_HELLO => {
                let ch = ClientHello::parse(f.fragment).unwrap();
                client_random = ch.random;
                transcript.clear();
                if ch.cookie.is_empty() {
                    continue; // ClientHello 1 and HelloVerifyRequest stay out of the transcript
                }
                session = logs.iter().position(|(cr, _)| *cr == ch.random).unwrap();
            }
            msg_type::HELLO_VERIFY_REQUEST => continue,
            msg_type::SERVER_HELLO => {
                server_random = ServerHello::parse(f.fragment).unwrap().random
            }
            msg_type::SERVER_KEY_EXCHANGE => {
                let ske = ServerKeyExchange::parse(f.fragment).unwrap();
                let signed = [&client_random[..], &server_random[..], &ske.params()].concat();
                server_pub
                    .verify(&signed, &Signature::from_der(&ske.signature).unwrap())
                    .unwrap();
            }
            msg_type::CERTIFICATE_VERIFY => {
                let cv = CertificateVerify::parse(f.fragment).unwrap();
                device_pub
                    .verify(&transcript, &Signature::from_der(&cv.signature).unwrap())
                    .unwrap();
            }
            msg_type::FINISHED => {
                let master = &logs[session].1;
                let label: &[u8] = if r["dir"] == "device_to_cloud" {
                    b"client finished"
                } else {
                    b"server finished"
                };
                assert_eq!(
                    verify_data(master, label, &transcript).to_vec(),
                    f.fragment,
                    "record {}",
                    r["n"]
                );
                finished_seen += 1;
            }
            _ => {}
        }
        transcript.extend_from_slice(&msg);
    }
    assert_eq!(finished_seen, 4);
}

#[test]
fn nss_key_log_lines_match_the_captured_key_log() {
    let ours: Vec<String> = keylog()
        .iter()
        .map(|(cr, ms)| protocol::dtls::nss_key_log_line(cr, ms))
        .collect();
    let theirs: Vec<String> = vectors("keys/keylog.txt")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ours, theirs);
}
