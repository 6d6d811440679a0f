#![no_main]
//! Records and handshake fragments: no panics; parse → emit → parse agrees.

use libfuzzer_sys::fuzz_target;
use protocol::dtls::handshake::FragmentRepr;
use protocol::dtls::record::{parse_datagram, RecordRepr};

fuzz_target!(|data: &[u8]| {
    for cid_len in [0usize, 8] {
        let Ok(records) = parse_datagram(data, cid_len) else { continue };
        if records.is_empty() {
            continue;
        }
        let mut out = Vec::new();
        for r in &records {
            r.emit(&mut out);
            if let Ok(frags) = FragmentRepr::parse_all(r.fragment) {
                let mut again = Vec::new();
                for f in &frags {
                    f.emit(&mut again);
                }
                assert_eq!(again, r.fragment);
            }
        }
        // Header fields re-emit exactly (the only freedom would be the version, kept as read).
        assert_eq!(out, data);
        let (first, _) = RecordRepr::parse(&out, cid_len).expect("re-parse");
        assert_eq!(first, records[0]);
    }
});
