#![no_main]
//! Every handshake body parser: no panics; parse → emit → parse gives the same value.

use libfuzzer_sys::fuzz_target;
use protocol::dtls::handshake::*;
use protocol::dtls::keys::{signing_key_from_der, spki_from_certificate, verifying_key_from_spki};
use protocol::dtls::SessionState;

macro_rules! round_trip {
    ($ty:ident, $body:expr) => {
        if let Ok(m) = $ty::parse($body) {
            let mut out = Vec::new();
            m.emit(&mut out);
            assert_eq!($ty::parse(&out).expect("re-parse"), m);
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    match selector % 8 {
        0 => round_trip!(ClientHello, body),
        1 => round_trip!(ServerHello, body),
        2 => round_trip!(HelloVerifyRequest, body),
        3 => round_trip!(ServerKeyExchange, body),
        4 => round_trip!(CertificateRequest, body),
        5 => {
            for raw in [true, false] {
                if let Ok(m) = Certificate::parse(body, raw) {
                    let mut out = Vec::new();
                    m.emit(&mut out);
                    assert_eq!(Certificate::parse(&out, raw).expect("re-parse"), m);
                }
            }
        }
        6 => {
            round_trip!(ClientKeyExchange, body);
            round_trip!(CertificateVerify, body);
            round_trip!(Finished, body);
            round_trip!(Alert, body);
        }
        _ => {
            if let Ok(s) = SessionState::from_bytes(body) {
                assert_eq!(SessionState::from_bytes(&s.to_bytes()).expect("re-parse"), s);
            }
            let _ = spki_from_certificate(body);
            let _ = verifying_key_from_spki(body);
            let _ = signing_key_from_der(body);
        }
    }
});
