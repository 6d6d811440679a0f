//! A fleet run in the reports of `hil run`: each expectation of a fleet file is a test case
//! (JUnit `<testcase>`, pass or fail with what was found), and the run's figures (time to
//! 50 / 90 / 95 / 100 % per cohort and version, devices bricked, failed, in safe mode,
//! transfers started while busy, the staged rollout's outcome) go in the JSON report.

use std::time::Duration;

use serde_json::{json, Value};

use super::FleetRun;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The run's figures and checks, as the JSON report's entry for its file.
pub fn json(run: &FleetRun) -> Value {
    let last = run.curve.rows.last();
    let total =
        |f: fn(&super::CohortCounts) -> u32| -> u32 { last.map_or(0, |r| r.iter().map(f).sum()) };
    let milestones: Vec<Value> = run
        .curve
        .version_milestones()
        .into_iter()
        .map(|m| {
            let mut entry = json!({
                "cohort": m.cohort,
                "devices": m.size,
                "version": m.version,
                "on_at_end": m.at_end,
            });
            for (p, at) in &m.reached {
                // "seconds_to_95_percent": the first sample with at least 95 % (null: never).
                entry[format!("seconds_to_{p}_percent")] = json!(at.map(secs));
            }
            entry
        })
        .collect();
    json!({
        "file": run.curve.file.display().to_string(),
        "name": run.name,
        "seed": run.seed,
        "passed": run.passed(),
        "virtual_seconds": secs(run.curve.end()),
        "devices": run.stats.devices,
        "checks": run.checks.iter().map(|c| json!({
            "name": c.what,
            "outcome": if c.passed { "pass" } else { "fail" },
            "found": c.found,
        })).collect::<Vec<_>>(),
        "summary": {
            "milestones": milestones,
            "bricked": total(|c| c.bricked),
            "failed": total(|c| c.failed),
            "safe_mode": total(|c| c.safe_mode),
            "updating": total(|c| c.updating),
            "updated_while_busy": run.stats.updated_while_busy,
            "power_losses_during_update": run.stats.power_losses_during_update,
            "handshakes": run.stats.handshakes,
            "resumptions": run.stats.resumptions,
            "datagrams": run.stats.datagrams,
            "cloud_events": run.stats.cloud_events,
        },
        "rollout": run.rollout.as_ref().map(|r| json!({
            "version": r.version,
            "state": r.state,
            "stage": r.stage,
            "stages": r.stages,
            "admitted": r.counts.admitted,
            "succeeded": r.counts.succeeded,
            "failed": r.counts.failed,
            "timed_out": r.counts.timed_out,
            "safe_mode": r.counts.safe_mode,
            "log": r.log.iter().map(|(at, line)| json!({"seconds": secs(*at), "text": line}))
                .collect::<Vec<_>>(),
        })),
    })
}

/// Pass / fail counts of a run's checks.
pub fn counts(run: &FleetRun) -> (usize, usize) {
    let failed = run.checks.iter().filter(|c| !c.passed).count();
    (run.checks.len() - failed, failed)
}

/// Escapes text for XML attributes and character data (characters XML 1.0 cannot hold
/// become U+FFFD).
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A fleet file's part of the JUnit report.
#[derive(Debug, Clone, PartialEq)]
pub struct JunitSuite {
    /// The `<testsuite>` element.
    pub xml: String,
    pub tests: usize,
    pub failures: usize,
    /// Wall-clock seconds.
    pub time: f64,
}

/// One `<testsuite>` for the run: a `<testcase>` per check, failing ones with a `<failure>`
/// whose message is the check and what was found; the run's summary as `<system-out>` of
/// each case. `wall` is the wall-clock seconds the run took (JUnit's `time`).
pub fn junit_suite(run: &FleetRun, wall: f64) -> JunitSuite {
    let (_, failed) = counts(run);
    let mut out = format!(
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" skipped=\"0\" time=\"{wall:.3}\">\n",
        xml(&run.curve.file.display().to_string()),
        run.checks.len(),
    );
    out.push_str(&format!(
        "    <properties><property name=\"seed\" value=\"{}\"/><property name=\"devices\" value=\"{}\"/><property name=\"target_seconds\" value=\"{:.3}\"/></properties>\n",
        run.seed,
        run.stats.devices,
        secs(run.curve.end())
    ));
    let summary = run.summary();
    let per_case = if run.checks.is_empty() {
        0.0
    } else {
        wall / run.checks.len() as f64
    };
    for c in &run.checks {
        out.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{per_case:.3}\">\n",
            xml(&run.name),
            xml(&c.what)
        ));
        if !c.passed {
            let message = format!("{}: found {}", c.what, c.found);
            out.push_str(&format!(
                "      <failure message=\"{}\">{}\nreplay: hil run --seed {} {}</failure>\n",
                xml(&message),
                xml(&message),
                run.seed,
                xml(&run.curve.file.display().to_string())
            ));
        }
        out.push_str(&format!(
            "      <system-out>{}</system-out>\n",
            xml(&summary)
        ));
        out.push_str("    </testcase>\n");
    }
    out.push_str("  </testsuite>\n");
    JunitSuite {
        xml: out,
        tests: run.checks.len(),
        failures: failed,
        time: wall,
    }
}

/// A fleet file that could not run to its end: one failing case named `run` with the error.
pub fn junit_error_suite(file: &std::path::Path, error: &str, wall: f64) -> JunitSuite {
    let name = xml(&file.display().to_string());
    let error = xml(error);
    JunitSuite {
        xml: format!(
            "  <testsuite name=\"{name}\" tests=\"1\" failures=\"1\" skipped=\"0\" time=\"{wall:.3}\">\n    <testcase classname=\"{name}\" name=\"run\" time=\"{wall:.3}\">\n      <failure message=\"{error}\">{error}</failure>\n    </testcase>\n  </testsuite>\n"
        ),
        tests: 1,
        failures: 1,
        time: wall,
    }
}

/// The value of attribute `name` in an XML start tag.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let from = tag.find(&key)? + key.len();
    let len = tag[from..].find('"')?;
    Some(&tag[from..from + len])
}

/// Adds fleet suites to the JUnit document `hil run` made for its scenario files
/// (`scenario::report::junit`): the suites go before the closing `</testsuites>` and the root
/// element's `tests`, `failures` and `time` are recounted with them.
pub fn add_to_junit(doc: &str, suites: &[JunitSuite]) -> String {
    if suites.is_empty() {
        return doc.to_string();
    }
    let mut out =
        String::with_capacity(doc.len() + suites.iter().map(|s| s.xml.len()).sum::<usize>());
    let mut lines = doc.lines().peekable();
    let extra_tests: usize = suites.iter().map(|s| s.tests).sum();
    let extra_failures: usize = suites.iter().map(|s| s.failures).sum();
    let extra_time: f64 = suites.iter().map(|s| s.time).sum();
    while let Some(line) = lines.next() {
        if line.starts_with("<testsuites ") {
            let num = |n: &str| attribute(line, n).and_then(|v| v.parse::<f64>().ok());
            let tests = num("tests").unwrap_or(0.0) as usize + extra_tests;
            let failures = num("failures").unwrap_or(0.0) as usize + extra_failures;
            let skipped = num("skipped").unwrap_or(0.0) as usize;
            let time = num("time").unwrap_or(0.0) + extra_time;
            let name = attribute(line, "name").unwrap_or("hil");
            out.push_str(&format!(
                "<testsuites name=\"{name}\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{time:.3}\">\n"
            ));
            continue;
        }
        if line == "</testsuites>" && lines.peek().is_none() {
            for s in suites {
                out.push_str(&s.xml);
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
