//! `hil fixture from-events`: reading saved event streams (both forms, errors naming the line)
//! and the scenario skeleton of the worked example.

use std::path::{Path, PathBuf};

use harness::cloud::safe_mode::legacy_describe_json;
use harness::scenario::field::{parse_events, parse_timestamp, skeleton, toml_string, StreamForm};
use harness::scenario::{parse, Action, DeviceOsVersion, Expectation, FirmwareSpec, Step};
use protocol::message::{FirmwareModule, FirmwareModuleDependency, SystemDescribe};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/field/example-safe-mode-after-update.events")
}

#[test]
fn the_worked_example_becomes_a_skeleton_that_parses() {
    let text = std::fs::read_to_string(example()).unwrap();
    let (events, form) = parse_events(&text, &example()).unwrap();
    assert_eq!(form, StreamForm::Sse);
    assert_eq!(events.len(), 28);
    assert_eq!(events[0].name, "spark/status");
    assert_eq!(events[0].line, 3);
    assert_eq!(events[0].version, Some(3));
    assert_eq!(events[0].product_id, Some(30301));
    let toml = skeleton(&events, form, "example-safe-mode-after-update.events");
    let s = parse(&toml, Path::new("skeleton.toml")).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(s.setup.board, "boron");
    assert_eq!(s.setup.firmware.app, 3);
    assert!(s
        .report
        .iter()
        .any(|(k, v)| k == "platform" && v == "\"boron (13)\""));
    // The app that led to safe mode was built against the Device OS its user part depends on.
    let flashes: Vec<&FirmwareSpec> = s
        .steps
        .iter()
        .filter_map(|st| match &st.step {
            Step::Action(Action::CloudFlash(spec)) => Some(spec),
            _ => None,
        })
        .collect();
    assert_eq!(flashes[0].app, Some(4));
    assert_eq!(flashes[0].built_against, Some(DeviceOsVersion(6200)));
    assert_eq!(flashes[1].device_os, Some(DeviceOsVersion(6200)));
    assert_eq!(flashes[1].built_against, None);
    insta::assert_snapshot!(toml);
}

#[test]
fn what_the_local_cloud_publishes_in_safe_mode_is_what_the_generator_reads() {
    // The describe of an emulated Boron on 5.8.0 running an app built against 6.2.0, as our
    // cloud turns it into spark/status/safe-mode.
    let module = |r#type, index, version, passed, dep: Option<(i32, u32, u32)>| FirmwareModule {
        r#type,
        index,
        version,
        max_size: 262_144,
        checked_flags: 0x1e,
        passed_flags: passed,
        hash: (r#type == 5).then(|| vec![0xae; 32]),
        dependencies: dep
            .map(|(r#type, index, version)| FirmwareModuleDependency {
                r#type,
                index,
                version,
            })
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let describe = SystemDescribe {
        firmware_modules: vec![
            module(2, 0, 2300, 0x1e, None),
            module(4, 1, 5800, 0x1e, Some((2, 0, 2300))),
            module(5, 2, 6, 0x1a, Some((4, 1, 6200))),
        ],
        ..Default::default()
    };
    let data = legacy_describe_json(Some(13), &describe);
    let event = |name: &str, data: &str, version: u16| {
        format!(
            "event: {name}\ndata: {{\"data\":{},\"ttl\":60,\"published_at\":\"2024-05-13T11:03:55.015Z\",\"coreid\":\"e00fce68ece1d3d21a73dcc9\",\"version\":{version}}}\n\n",
            serde_json::Value::String(data.to_string())
        )
    };
    let text = [
        event("spark/status", "online", 3),
        event("spark/flash/status", "started ", 3),
        event("spark/flash/status", "success ", 3),
        event("spark/device/last_reset", "update", 0),
        event("spark/status/safe-mode", &data, 0),
    ]
    .concat();
    let (events, form) = parse_events(&text, Path::new("ours.events")).unwrap();
    let toml = skeleton(&events, form, "ours.events");
    let s = parse(&toml, Path::new("skeleton.toml")).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(s.setup.board, "boron");
    assert_eq!(s.setup.firmware.device_os, DeviceOsVersion(5800));
    assert_eq!(s.setup.firmware.bootloader, 2300);
    assert!(toml.contains("u2 v6 fails checks (checked 0x1e, passed 0x1a); depends on s1 v6200"));
    assert!(s.steps.iter().any(|st| matches!(
        &st.step,
        Step::Action(Action::CloudFlash(spec)) if spec.built_against == Some(DeviceOsVersion(6200))
    )));
    assert!(s
        .steps
        .iter()
        .any(|st| st.step == Step::Expect(vec![Expectation::SafeMode(true)])));
}

#[test]
fn particle_subscribe_output_is_read_too() {
    // The reference's examples, as `particle subscribe` prints them (header, blank line, one
    // JSON object per line with `name` last; the 2016 form has a string ttl and an odd time).
    let text = "Subscribing to all events from your devices\n\n\
{\"data\":\"auto-update\",\"ttl\":60,\"published_at\":\"2024-05-13T11:03:42.408Z\",\"coreid\":\"e00fce68ece1d3d21a73dcc9\",\"userid\":\"\",\"version\":1,\"public\":false,\"productID\":30301,\"name\":\"spark/status\"}\n\
{\"data\":\"false\",\"ttl\":60,\"published_at\":\"2024-05-13T11:03:55.242Z\",\"coreid\":\"e00fce68ece1d3d21a73dcc9\",\"userid\":\"\",\"version\":2,\"public\":false,\"productID\":30301,\"name\":\"particle/device/updates/pending\"}\n\
{\"name\":\"spark/safe-mode-updater/updating\",\"data\":\"2\",\"ttl\":\"60\",\"published_at\":\"2016-01-01T14:41:0.000Z\",\"coreid\":\"particle-internal\"}\n";
    let (events, form) = parse_events(text, Path::new("sub.jsonl")).unwrap();
    assert_eq!(form, StreamForm::Subscribe);
    assert_eq!(events.len(), 3);
    assert_eq!(events[1].name, "particle/device/updates/pending");
    assert_eq!(events[1].line, 4);
    assert_eq!(events[2].coreid.as_deref(), Some("particle-internal"));
    assert!(events[2].at_ms.is_some());
    let toml = skeleton(&events, form, "sub.jsonl");
    parse(&toml, Path::new("skeleton.toml")).unwrap_or_else(|e| panic!("{e}\n{toml}"));
}

#[test]
fn malformed_lines_are_errors_naming_the_line() {
    let ok = "event: spark/status\ndata: {\"data\":\"online\",\"ttl\":60,\"published_at\":\"2024-05-13T11:03:42.408Z\",\"coreid\":\"e00fce68ece1d3d21a73dcc9\"}\n\n";
    let cases = [
        (
            format!("{ok}event: x\ndata: {{not json\n\n"),
            "f.events:4: the data of event `x` is not JSON",
        ),
        (
            format!("{ok}data: {{\"data\":\"\"}}\n\n"),
            "f.events:4: `data:` without an `event:` line",
        ),
        (
            format!("{ok}event: x\n\n"),
            "f.events:4: event `x` has no `data:` line",
        ),
        (
            format!("{ok}event: x\nevent: y\n"),
            "f.events:5: a second `event:` line",
        ),
        (
            format!("{ok}hello world\n"),
            "f.events:4: not an event line",
        ),
        (
            format!("{ok}{{\"data\":\"x\"}}\n"),
            "f.events:4: the JSON event has no `name`",
        ),
        (
            format!("{ok}{{\"name\":\"x\"}}\n"),
            "f.events:4: event `x` has no `data` key",
        ),
        (format!("{ok}[1,2]\n"), "f.events:4: not an event line"),
        (
            format!("{ok}{{\"name\":\"x\",\n"),
            "f.events:4: not a JSON event",
        ),
    ];
    for (text, want) in cases {
        let e = parse_events(&text, Path::new("f.events")).unwrap_err();
        assert!(e.to_string().starts_with(want), "{e}\nwanted: {want}");
    }
}

#[test]
fn crlf_comments_ids_and_multi_line_data_follow_the_sse_rules() {
    let text = ":ok\r\n\r\nid: 7\r\nevent: a\r\ndata: {\"data\":\r\ndata: \"x\"}\r\n\r\n: keep-alive\r\n\n";
    let (events, _) = parse_events(text, Path::new("f")).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, "x");
    assert_eq!(events[0].line, 4);
}

#[test]
fn any_stream_gives_a_skeleton_that_parses() {
    for text in [
        "",
        ":ok\n\n",
        "{\"name\":\"spark/flash/status\",\"data\":\"started \",\"coreid\":\"zz\"}\n",
        "{\"name\":\"spark/status/safe-mode\",\"data\":\"{\\\"p\\\":999}\",\"coreid\":\"e00fce68ece1d3d21a73dcc9\"}\n",
        "{\"name\":\"weird \\\"name\\\"\\u0007\",\"data\":\"\\u007f\\n\",\"coreid\":\"a\"}\n{\"name\":\"x\",\"data\":\"\",\"coreid\":\"b\"}\n",
        // Versions that have no dotted form, or are no module version at all.
        concat!(
            "{\"name\":\"spark/flash/status\",\"data\":\"started \",\"coreid\":\"e00fce68ece1d3d21a73dcc9\"}\n",
            "{\"name\":\"spark/status/safe-mode\",\"data\":\"{\\\"p\\\":13,\\\"m\\\":[{\\\"f\\\":\\\"s\\\",\\\"n\\\":\\\"1\\\",\\\"v\\\":65100,\\\"vc\\\":30,\\\"vv\\\":30},{\\\"f\\\":\\\"u\\\",\\\"n\\\":\\\"1\\\",\\\"v\\\":6,\\\"vc\\\":30,\\\"vv\\\":26,\\\"d\\\":[{\\\"f\\\":\\\"s\\\",\\\"n\\\":\\\"1\\\",\\\"v\\\":65535}]}]}\",\"coreid\":\"e00fce68ece1d3d21a73dcc9\"}\n",
            "{\"name\":\"spark/flash/status\",\"data\":\"started \",\"coreid\":\"e00fce68ece1d3d21a73dcc9\"}\n",
            "{\"name\":\"spark/status/safe-mode\",\"data\":\"{\\\"m\\\":[{\\\"f\\\":\\\"u\\\",\\\"vc\\\":30,\\\"vv\\\":26,\\\"d\\\":[{\\\"f\\\":\\\"s\\\",\\\"v\\\":99999}]}]}\",\"coreid\":\"e00fce68ece1d3d21a73dcc9\"}\n",
        ),
    ] {
        let (events, form) = parse_events(text, Path::new("f")).unwrap();
        let toml = skeleton(&events, form, "f");
        parse(&toml, Path::new("skeleton.toml")).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        if text.contains("65535") {
            // No dotted form reads back as 65100 or 65535: the integer form is written.
            assert!(toml.contains("\ndevice_os = 65100 "), "{toml}");
            assert!(toml.contains("\nbuilt_against = 65535 "), "{toml}");
        }
    }
}

#[test]
fn timestamps_and_toml_strings() {
    assert_eq!(parse_timestamp("1970-01-01T00:00:00.000Z"), Some(0));
    assert_eq!(
        parse_timestamp("2024-05-13T11:03:42.408Z"),
        Some(1_715_598_222_408)
    );
    assert_eq!(
        parse_timestamp("2016-01-01T14:41:0.000Z"),
        Some(1_451_659_260_000)
    );
    assert_eq!(parse_timestamp("2024-13-01T00:00:00Z"), None);
    assert_eq!(parse_timestamp("yesterday"), None);
    assert_eq!(toml_string("a\"b\\c\n\u{7f}"), "\"a\\\"b\\\\c\\n\\u007F\"");
}
