//! Malformed, truncated and mutated CoAP input gives typed errors, never a panic.
//!
//! Three sources: a hand-written corpus of RFC 7252 message format errors (each with the error it
//! must give), every truncation of every message of the real session, and a seeded
//! random-mutation run over the same messages (the stable-toolchain stand-in for the cargo-fuzz
//! targets in `protocol/fuzz/`). A failing mutation prints its seed and input.

use protocol::coap::{CoapError, Endpoint, EndpointConfig, Message};
use protocol::message::{CatalogueError, ParticleMessage};
use serde_json::Value;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The CoAP plaintexts of the real session.
fn session_messages() -> Vec<Vec<u8>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/wire/records.jsonl"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["real_content_type"] == 23 || r["content_type"] == 23)
        .filter_map(|r| r.get("plaintext_hex")?.as_str().map(hex))
        .collect()
}

/// Everything the decoders promise for one input: no panic; a message that parses re-emits the
/// same bytes (CoAP) or the same value (catalogue).
fn check(bytes: &[u8]) {
    if let Ok(message) = Message::parse(bytes) {
        assert_eq!(
            message.emit().as_deref(),
            Ok(bytes),
            "CoAP re-emission differs for {}",
            hex_string(bytes)
        );
    }
    if let Ok(typed) = ParticleMessage::parse(bytes) {
        let emitted = typed
            .emit()
            .unwrap_or_else(|e| panic!("{} parses but does not emit: {e}", hex_string(bytes)));
        assert_eq!(
            ParticleMessage::parse(&emitted).as_ref(),
            Ok(&typed),
            "catalogue round trip differs for {}",
            hex_string(bytes)
        );
    }
}

/// An input and the test its error must pass.
type Case<E> = (&'static str, fn(&E) -> bool);

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn session_has_coap_messages_to_mutate() {
    assert_eq!(session_messages().len(), 49);
}

#[test]
fn malformed_coap_gives_the_named_error() {
    let cases: Vec<Case<CoapError>> = vec![
        ("", |e| {
            matches!(e, CoapError::Truncated { what: "header", .. })
        }),
        ("4002", |e| {
            matches!(e, CoapError::Truncated { what: "header", .. })
        }),
        ("00020001", |e| {
            matches!(e, CoapError::UnsupportedVersion { version: 0 })
        }),
        ("80020001", |e| {
            matches!(e, CoapError::UnsupportedVersion { version: 2 })
        }),
        ("4f020001", |e| {
            matches!(e, CoapError::TokenLengthReserved { length: 15 })
        }),
        ("42020001aa", |e| {
            matches!(e, CoapError::Truncated { what: "token", .. })
        }),
        ("40200001", |e| matches!(e, CoapError::ReservedCode { .. })),
        ("40c00001", |e| matches!(e, CoapError::ReservedCode { .. })),
        ("41000001aa", |e| {
            matches!(e, CoapError::EmptyMessageWithContent { .. })
        }),
        ("60000001ff00", |e| {
            matches!(e, CoapError::EmptyMessageWithContent { .. })
        }),
        ("70000001b1", |e| {
            matches!(e, CoapError::EmptyMessageWithContent { .. })
        }),
        ("40020001b168ff", |e| {
            matches!(e, CoapError::EmptyPayloadAfterMarker { .. })
        }),
        ("40020001f0", |e| {
            matches!(e, CoapError::ReservedOptionNibble { .. })
        }),
        ("400200010f", |e| {
            matches!(e, CoapError::ReservedOptionNibble { .. })
        }),
        ("40020001d0", |e| {
            matches!(
                e,
                CoapError::Truncated {
                    what: "option delta",
                    ..
                }
            )
        }),
        ("40020001e000", |e| {
            matches!(
                e,
                CoapError::Truncated {
                    what: "option delta",
                    ..
                }
            )
        }),
        ("400200010d", |e| {
            matches!(
                e,
                CoapError::Truncated {
                    what: "option length",
                    ..
                }
            )
        }),
        ("400200010e01", |e| {
            matches!(
                e,
                CoapError::Truncated {
                    what: "option length",
                    ..
                }
            )
        }),
        ("40020001b2ff", |e| {
            matches!(
                e,
                CoapError::Truncated {
                    what: "option value",
                    ..
                }
            )
        }),
        ("40020001e0ff00e0ff00", |e| {
            matches!(e, CoapError::OptionNumberTooLarge { .. })
        }),
        ("4001000161aa5168", |e| {
            matches!(e, CoapError::UriPathNotFirst { first: 6 })
        }),
    ];
    for (input, expected) in cases {
        let error = Message::parse(&hex(input)).expect_err(input);
        assert!(expected(&error), "{input}: got {error:?}");
        // Every error reads as one sentence.
        assert!(!error.to_string().is_empty());
    }
}

#[test]
fn malformed_particle_messages_give_the_named_error() {
    let cases: Vec<Case<CatalogueError>> = vec![
        // Hello with a 31-byte payload.
        (
            "40020001b168ff00000000000000000000000000000000000000000000000000000000",
            |e| {
                matches!(
                    e,
                    CatalogueError::PayloadLength {
                        message: "Hello",
                        ..
                    }
                )
            },
        ),
        // Request with Content-Format before Uri-Path.
        ("40020001c0", |e| {
            matches!(e, CatalogueError::MissingUriPath { .. })
        }),
        // Time request with a payload.
        ("41010001aab174ff00", |e| {
            matches!(e, CatalogueError::UnexpectedPayload { .. })
        }),
        // Describe without Uri-Query.
        ("41020001aab164", |e| {
            matches!(e, CatalogueError::MissingOption { option: 15, .. })
        }),
        // Describe with a two-byte Uri-Query.
        ("41020001aab164420102", |e| {
            matches!(e, CatalogueError::OptionLength { option: 15, .. })
        }),
        // Describe with a reserved block size.
        ("41020001aab1644101c107", |e| {
            matches!(e, CatalogueError::InvalidField { .. })
        }),
        // Event with an unknown option (Uri-Query).
        ("40020001b14501614101", |e| {
            matches!(e, CatalogueError::UnexpectedOption { option: 15, .. })
        }),
        // Event name not UTF-8.
        ("40020001b14501ff", |e| {
            matches!(e, CatalogueError::InvalidUtf8 { .. })
        }),
        // Event with Max-Age of 5 bytes.
        ("40020001b145016135 0102030405", |e| {
            matches!(e, CatalogueError::OptionLength { option: 14, .. })
        }),
        // Event with Max-Age twice.
        ("40020001b1450161310a010a", |e| {
            matches!(e, CatalogueError::RepeatedOption { option: 14, .. })
        }),
        // UpdateStart as NON.
        ("51020001aab153e206f11388", |e| {
            matches!(e, CatalogueError::WrongType { .. })
        }),
        // UpdateChunk with a token.
        ("51020001aab143e106e901ff00", |e| {
            matches!(e, CatalogueError::UnexpectedToken { .. })
        }),
        // UpdateChunk without Chunk-Index.
        ("50020001b143ff00", |e| {
            matches!(e, CatalogueError::MissingOption { option: 2049, .. })
        }),
        // UpdateFinish without token.
        ("40020001b146", |e| {
            matches!(e, CatalogueError::MissingToken { .. })
        }),
        // Goodbye with unknown flag bits.
        ("40020001b178ff20", |e| {
            matches!(e, CatalogueError::InvalidField { .. })
        }),
        // Empty NON.
        ("50000001", |e| {
            matches!(e, CatalogueError::EmptyNonConfirmable)
        }),
    ];
    for (input, expected) in cases {
        let error = ParticleMessage::parse(&hex(input)).expect_err(input);
        assert!(expected(&error), "{input}: got {error:?}");
        assert!(!error.to_string().is_empty());
    }
}

#[test]
fn every_truncation_of_every_session_message_is_handled() {
    for message in session_messages() {
        for len in 0..=message.len() {
            check(&message[..len]);
        }
        // Cut before the end: never the same message, and a cut inside the header or the
        // options is an error.
        if message.len() > 4 {
            assert!(Message::parse(&message[..3]).is_err());
        }
    }
}

/// xorshift64*: small, seeded, reproducible.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=self.below(4) {
            match self.below(6) {
                0 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] ^= 1 << self.below(8);
                }
                1 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] = self.next() as u8;
                }
                2 => {
                    let i = self.below(out.len() + 1);
                    out.insert(i, self.next() as u8);
                }
                3 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out.remove(i);
                }
                4 => {
                    let len = self.below(out.len() + 1);
                    out.truncate(len);
                }
                _ if !out.is_empty() => {
                    // Interesting CoAP bytes: nibbles 13/14/15, payload marker, version bits.
                    let i = self.below(out.len());
                    out[i] = [0xFF, 0xD0, 0xE0, 0x0D, 0x0E, 0xF0, 0x0F, 0x40, 0x00][self.below(9)];
                }
                _ => {}
            }
        }
        out
    }
}

#[test]
fn seeded_random_mutations_never_panic() {
    let seed = std::env::var("HIL_MUTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C0A9_u64);
    let iterations: usize = std::env::var("HIL_MUTATION_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let corpus = session_messages();
    let mut mutator = Mutator(seed);
    let mut parsed = 0;
    for i in 0..iterations {
        let input = mutator.mutate(&corpus[i % corpus.len()]);
        let result = std::panic::catch_unwind(|| check(&input));
        if let Err(panic) = result {
            panic!(
                "seed {seed:#x}, iteration {i}, input {}: {:?}",
                hex_string(&input),
                panic.downcast_ref::<String>()
            );
        }
        parsed += usize::from(ParticleMessage::parse(&input).is_ok());
    }
    // The mutations reach past the first checks.
    assert!(parsed > iterations / 20, "only {parsed} mutants parsed");
}

#[test]
fn endpoint_survives_mutated_traffic() {
    struct Zero;
    impl rand_core::RngCore for Zero {
        fn next_u32(&mut self) -> u32 {
            0
        }
        fn next_u64(&mut self) -> u64 {
            0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(0)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            dest.fill(0);
            Ok(())
        }
    }
    let corpus = session_messages();
    let mut mutator = Mutator(0xC0FFEE);
    let mut endpoint = Endpoint::new(EndpointConfig::default(), Zero);
    let mut now = std::time::Duration::ZERO;
    for i in 0..5_000 {
        let input = mutator.mutate(&corpus[i % corpus.len()]);
        let _ = endpoint.handle_message(now, &input);
        while endpoint.poll_transmit().is_some() {}
        while endpoint.poll_event().is_some() {}
        now += std::time::Duration::from_millis(50);
        endpoint.handle_timeout(now);
    }
}
