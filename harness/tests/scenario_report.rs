//! Report shapes: the JSON parses back with the documented keys, the JUnit XML is well formed
//! (checked by a small parser here) and counts what the run did, and the summary table ends in
//! the totals line.

mod scenario_double;

use std::path::Path;
use std::time::Duration;

use harness::scenario::report::{json_report, junit, summary_table, xml_escape, Totals};
use harness::scenario::runner::{self, ScenarioResult};
use harness::scenario::{parse, Capability, Target, TargetError};
use scenario_double::{Calls, ScriptedTarget};

const BASE: &str = "board = \"boron\"\n[firmware]\ndevice_os = \"6.2.0\"\napp = 3\n";

fn run(name: &str, body: &str, caps: Vec<Capability>) -> ScenarioResult {
    let text = format!("name = {name:?}\n{BASE}{body}");
    let s = parse(&text, Path::new(&format!("fixtures/{name}.toml"))).unwrap();
    let mut factory = move || -> Result<Box<dyn Target>, TargetError> {
        Ok(Box::new(ScriptedTarget::new(
            caps.clone(),
            Calls::default(),
        )))
    };
    runner::run(&s, None, &mut factory)
}

fn results() -> Vec<ScenarioResult> {
    vec![
        run(
            "passes",
            "[[step]]\ndo = \"cloud.flash\"\napp = 4\n[[step]]\ndo = \"wait.event\"\nname = \"spark/device/last_reset\"\n[expect]\nrunning = { app = 4 }\n",
            Capability::ALL.to_vec(),
        ),
        run(
            // Quotes, ampersands and angle brackets must survive the XML.
            "fails <&\"'>",
            "[[step]]\ndo = \"expect\"\nrunning = { app = 9 }\n",
            Capability::ALL.to_vec(),
        ),
        run(
            "skips",
            "[[step]]\ndo = \"link.partition\"\nduration = \"1m\"\n",
            vec![Capability::InstallFirmware],
        ),
    ]
}

#[test]
fn totals_count_every_case_once() {
    assert_eq!(
        Totals::of(&results()),
        Totals {
            passed: 1,
            failed: 1,
            skipped: 1
        }
    );
}

#[test]
fn the_json_report_parses_back_with_every_case() {
    let value = json_report(&results(), "double", Some(5));
    let text = serde_json::to_string_pretty(&value).unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back["target"], "double");
    assert_eq!(back["seed_override"], 5);
    assert_eq!(back["totals"]["passed"], 1);
    assert_eq!(back["totals"]["failed"], 1);
    assert_eq!(back["totals"]["skipped"], 1);
    let scenarios = back["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 3);
    let pass = &scenarios[0]["cases"][0];
    assert_eq!(pass["outcome"], "pass");
    assert_eq!(pass["seconds"], 11.6);
    assert!(pass["failure"].is_null());
    assert!(pass["trace"].as_array().unwrap().len() > 5);
    let fail = &scenarios[1]["cases"][0];
    assert_eq!(fail["outcome"], "fail");
    assert_eq!(fail["failure"]["step"], 1);
    assert_eq!(fail["failure"]["line"], 6);
    assert_eq!(
        fail["failure"]["message"],
        "expected running app=9: app is 3, not 9"
    );
    let skip = &scenarios[2]["cases"][0];
    assert_eq!(skip["outcome"], "skip");
    assert_eq!(
        skip["skipped"][0]["reason"],
        "target double cannot: link-partition"
    );
}

#[test]
fn the_junit_report_is_well_formed_and_counts_the_run() {
    let wall = [
        vec![Duration::from_millis(250)],
        vec![Duration::from_millis(500)],
        vec![],
    ];
    let xml = junit(&results(), &wall);
    let root = parse_xml(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    assert_eq!(root.name, "testsuites");
    assert_eq!(root.attr("tests"), Some("3"));
    assert_eq!(root.attr("failures"), Some("1"));
    assert_eq!(root.attr("skipped"), Some("1"));
    assert_eq!(root.children.len(), 3);
    // CI systems read `time` as wall-clock seconds; the target's virtual time is a property.
    assert_eq!(root.attr("time"), Some("0.750"));
    let passed = &root.children[0];
    assert_eq!(passed.attr("time"), Some("0.250"));
    let passed_case = passed
        .children
        .iter()
        .find(|c| c.name == "testcase")
        .unwrap();
    assert_eq!(passed_case.attr("time"), Some("0.250"));
    let props = passed_case
        .children
        .iter()
        .find(|c| c.name == "properties")
        .unwrap();
    assert_eq!(props.children[0].attr("name"), Some("target_seconds"));
    assert_eq!(props.children[0].attr("value"), Some("11.600"));
    let suite = &root.children[1];
    assert_eq!(suite.name, "testsuite");
    assert_eq!(suite.attr("name"), Some("fixtures/fails <&\"'>.toml"));
    let case = suite
        .children
        .iter()
        .find(|c| c.name == "testcase")
        .unwrap();
    assert_eq!(case.attr("classname"), Some("fails <&\"'>"));
    let failure = case.children.iter().find(|c| c.name == "failure").unwrap();
    assert!(failure.text.contains("seed 1 (replay with --seed 1)"));
    let skipped_case = &root.children[2].children[1];
    assert_eq!(skipped_case.attr("time"), Some("0.000"));
    let skipped = skipped_case
        .children
        .iter()
        .find(|c| c.name == "skipped")
        .unwrap();
    assert!(skipped.attr("message").unwrap().contains("link-partition"));
}

#[test]
fn xml_escaping_keeps_text_and_drops_what_xml_cannot_hold() {
    assert_eq!(xml_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&apos;");
    assert_eq!(xml_escape("bell\u{7}"), "bell\u{FFFD}");
    assert_eq!(xml_escape("line\nnext"), "line\nnext");
}

#[test]
fn the_summary_ends_with_the_totals_line() {
    let table = summary_table(&results());
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[1].starts_with("PASS   fixtures/passes.toml [main]"));
    assert!(lines[2].contains("step 1: expected running app=9: app is 3, not 9"));
    assert_eq!(lines[4], "1 passed, 1 failed, 1 skipped");
}

// --- a small XML reader: elements, attributes, text, the five entities, numeric references.

#[derive(Debug)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
}

impl Element {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find(';').ok_or("unterminated entity")? + i;
        let ent = &rest[i + 1..end];
        match ent {
            "amp" => out.push('&'),
            "lt" => out.push('<'),
            "gt" => out.push('>'),
            "quot" => out.push('"'),
            "apos" => out.push('\''),
            e if e.starts_with('#') => {
                let n: u32 = e[1..].parse().map_err(|_| format!("bad reference {e}"))?;
                out.push(char::from_u32(n).ok_or("bad char")?);
            }
            e => return Err(format!("unknown entity {e}")),
        }
        rest = &rest[end + 1..];
    }
    if rest.contains('<') {
        return Err("raw < in text".into());
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_xml(xml: &str) -> Result<Element, String> {
    let body = xml
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
        .ok_or("no XML declaration")?;
    let mut pos = 0;
    let root = parse_element(body, &mut pos)?;
    if !body[pos..].trim().is_empty() {
        return Err("content after the root element".into());
    }
    Ok(root)
}

fn parse_element(s: &str, pos: &mut usize) -> Result<Element, String> {
    let rest = s[*pos..].trim_start();
    *pos = s.len() - rest.len();
    if !rest.starts_with('<') {
        return Err(format!("expected an element at {pos}"));
    }
    let close = rest.find('>').ok_or("unterminated tag")?;
    let tag = &rest[1..close];
    let self_closing = tag.ends_with('/');
    let tag = tag.trim_end_matches('/');
    let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
    let name = tag[..name_end].to_string();
    let mut attrs = Vec::new();
    let mut a = tag[name_end..].trim();
    while !a.is_empty() {
        let eq = a
            .find("=\"")
            .ok_or(format!("attribute without =\" in <{name}>"))?;
        let key = a[..eq].trim().to_string();
        let val_end = a[eq + 2..].find('"').ok_or("unterminated attribute")? + eq + 2;
        attrs.push((key, unescape(&a[eq + 2..val_end])?));
        a = a[val_end + 1..].trim_start();
    }
    *pos += close + 1;
    let mut el = Element {
        name,
        attrs,
        children: Vec::new(),
        text: String::new(),
    };
    if self_closing {
        return Ok(el);
    }
    loop {
        let rest = &s[*pos..];
        let lt = rest.find('<').ok_or(format!("</{}> missing", el.name))?;
        el.text.push_str(&unescape(&rest[..lt])?);
        *pos += lt;
        if s[*pos..].starts_with("</") {
            let end = format!("</{}>", el.name);
            if !s[*pos..].starts_with(&end) {
                return Err(format!("mismatched close tag for {}", el.name));
            }
            *pos += end.len();
            return Ok(el);
        }
        el.children.push(parse_element(s, pos)?);
    }
}

#[test]
fn a_sweeps_passing_cases_share_one_row_and_its_failures_keep_theirs() {
    use harness::scenario::runner::{CaseResult, Outcome};
    use std::time::Duration;
    let case = |name: &str, outcome: Outcome| CaseResult {
        name: name.to_string(),
        outcome,
        duration: Duration::from_secs(600),
        failure: None,
        skipped: Vec::new(),
        trace: Default::default(),
    };
    let result = ScenarioResult {
        file: "fixtures/sweep.toml".into(),
        name: "sweep".into(),
        seed: 1,
        cases: vec![
            case("clean", Outcome::Pass),
            case("sweep apply op 0 before", Outcome::Pass),
            case("sweep apply op 0 torn", Outcome::Pass),
            case("sweep apply op 1 before", Outcome::Fail),
            case("sweep apply op 1 torn", Outcome::Pass),
        ],
    };
    let table = summary_table(&[result]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[1].starts_with("PASS   fixtures/sweep.toml [clean]"));
    assert!(lines[2].starts_with("PASS   fixtures/sweep.toml [sweep apply: 3 cases]"));
    assert!(lines[3].starts_with("FAIL   fixtures/sweep.toml [sweep apply op 1 before]"));
    assert_eq!(lines[4], "4 passed, 1 failed, 0 skipped");
}
