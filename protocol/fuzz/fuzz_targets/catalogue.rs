//! Particle message catalogue: any bytes give a typed message or a typed error, never a panic; a
//! typed message re-emits to bytes that parse back to the same value; the payload readers
//! (Hello, system describe protobuf, application describe JSON, OTA stats, diagnostics) take
//! anything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::message::{
    ApplicationDescribe, Diagnostic, FinishStats, Hello, ParticleMessage, SystemDescribe,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = ParticleMessage::parse(data) {
        let emitted = message.emit().expect("a parsed message emits");
        let again = ParticleMessage::parse(&emitted).expect("an emitted message parses");
        assert_eq!(again, message, "round trip changes the message");
    }
    if let Ok(system) = SystemDescribe::parse(data) {
        let _ = SystemDescribe::parse(&system.emit()).expect("re-encoded describe decodes");
    }
    if let Ok(app) = ApplicationDescribe::parse(data) {
        assert_eq!(ApplicationDescribe::parse(&app.emit()).ok(), Some(app));
    }
    let _ = Hello::parse_payload(data);
    let _ = FinishStats::parse(data);
    let _ = Diagnostic::parse(data);
});
