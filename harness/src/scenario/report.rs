//! Reports of a run: a summary table for people, JUnit XML for CI, JSON for tools. Durations
//! are the target's (virtual for the emulator), so reports do not depend on the machine, except
//! JUnit's `time` attributes: CI systems read them as wall-clock seconds, so the caller passes
//! the wall time it measured and the target's time goes in a `target_seconds` property.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::runner::{CaseResult, Outcome, ScenarioResult};

/// Counts over every case.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Totals {
    pub fn of(results: &[ScenarioResult]) -> Totals {
        let mut t = Totals::default();
        for case in results.iter().flat_map(|r| &r.cases) {
            match case.outcome {
                Outcome::Pass => t.passed += 1,
                Outcome::Fail => t.failed += 1,
                Outcome::Skip => t.skipped += 1,
            }
        }
        t
    }

    pub fn total(&self) -> usize {
        self.passed + self.failed + self.skipped
    }
}

fn seconds(case: &CaseResult) -> String {
    format!("{:.3}", case.duration.as_secs_f64())
}

/// One line per case (its target time in the column `virtual time`), except that a sweep's passing cases share one line ("sweep apply: 93
/// cases"; its failing and skipped cases keep theirs), then the totals line ("N passed, N
/// failed, N skipped").
pub fn summary_table(results: &[ScenarioResult]) -> String {
    let mut rows = vec![(
        "result".to_string(),
        "scenario / case".to_string(),
        "virtual time".to_string(),
        "reason".to_string(),
    )];
    for r in results {
        let is_sweep_pass =
            |c: &CaseResult| c.outcome == Outcome::Pass && c.name.starts_with("sweep ");
        let mut sweep_row_done = false;
        for c in &r.cases {
            if !is_sweep_pass(c) {
                rows.push((
                    c.outcome.as_str().to_uppercase(),
                    format!("{} [{}]", r.file.display(), c.name),
                    format!("{}s", seconds(c)),
                    c.reason(),
                ));
                continue;
            }
            if sweep_row_done {
                continue;
            }
            sweep_row_done = true;
            let passed: Vec<&CaseResult> = r.cases.iter().filter(|c| is_sweep_pass(c)).collect();
            // "sweep apply op 3 torn" -> "sweep apply".
            let label = c.name.split(" op ").next().unwrap_or(&c.name);
            let longest = passed.iter().map(|c| c.duration).max().unwrap_or_default();
            rows.push((
                "PASS".to_string(),
                format!(
                    "{} [{label}: {} case{}]",
                    r.file.display(),
                    passed.len(),
                    if passed.len() == 1 { "" } else { "s" }
                ),
                format!("{:.3}s", longest.as_secs_f64()),
                String::new(),
            ));
        }
    }
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (outcome, name, time, reason) in rows {
        let line = format!("{outcome:<6} {name:<w1$} {time:>w2$}  {reason}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let t = Totals::of(results);
    out.push_str(&format!(
        "{} passed, {} failed, {} skipped\n",
        t.passed, t.failed, t.skipped
    ));
    out
}

/// The JSON report: the target, the seed override, totals, and every case with its trace.
pub fn json_report(
    results: &[ScenarioResult],
    target: &str,
    seed_override: Option<u64>,
) -> serde_json::Value {
    let t = Totals::of(results);
    json!({
        "target": target,
        "seed_override": seed_override,
        "time_base": "target time (virtual for the emulator), seconds",
        "totals": { "passed": t.passed, "failed": t.failed, "skipped": t.skipped },
        "scenarios": results.iter().map(|r| json!({
            "file": r.file.display().to_string(),
            "name": r.name,
            "seed": r.seed,
            "cases": r.cases.iter().map(|c| json!({
                "name": c.name,
                "outcome": c.outcome.as_str(),
                "seconds": c.duration.as_secs_f64(),
                "reason": c.reason(),
                "failure": c.failure.as_ref().map(|f| json!({
                    "step": f.step,
                    "line": f.at.map(|a| a.0),
                    "column": f.at.map(|a| a.1),
                    "step_text": f.step_text,
                    "message": f.message,
                    "seed": f.seed,
                })),
                "skipped": c.skipped.iter().map(|s| json!({
                    "step": s.step,
                    "text": s.text,
                    "reason": s.reason,
                })).collect::<Vec<_>>(),
                "trace": c.trace.lines(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Escapes text for XML attribute values and character data. Characters XML 1.0 cannot hold
/// at all (most control characters) become U+FFFD.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' => out.push(c),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn suite_name(file: &Path) -> String {
    file.display().to_string()
}

/// The JUnit XML report: one `<testsuite>` per scenario file, one `<testcase>` per case, with
/// `<failure>` or `<skipped>` and the trace in `<system-out>`. `wall[i][k]` is the wall-clock
/// time case `k` of `results[i]` took (missing entries count 0): it is every `time` attribute.
/// The target's time (virtual for the emulator) is the property `target_seconds` of each suite
/// and case.
pub fn junit(results: &[ScenarioResult], wall: &[Vec<Duration>]) -> String {
    let case_wall = |i: usize, k: usize| -> f64 {
        wall.get(i)
            .and_then(|w| w.get(k))
            .map_or(0.0, Duration::as_secs_f64)
    };
    let suite_wall = |i: usize| -> f64 {
        wall.get(i)
            .map_or(0.0, |w| w.iter().map(Duration::as_secs_f64).sum())
    };
    let t = Totals::of(results);
    let total_wall: f64 = (0..results.len()).map(suite_wall).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites name=\"hil\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
        t.total(),
        t.failed,
        t.skipped,
        total_wall
    ));
    for (i, r) in results.iter().enumerate() {
        let rt = Totals::of(std::slice::from_ref(r));
        let target_time: f64 = r.cases.iter().map(|c| c.duration.as_secs_f64()).sum();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
            xml_escape(&suite_name(&r.file)),
            rt.total(),
            rt.failed,
            rt.skipped,
            suite_wall(i),
        ));
        out.push_str(&format!(
            "    <properties><property name=\"seed\" value=\"{}\"/><property name=\"target_seconds\" value=\"{target_time:.3}\"/></properties>\n",
            r.seed
        ));
        for (k, c) in r.cases.iter().enumerate() {
            out.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">\n",
                xml_escape(&r.name),
                xml_escape(&c.name),
                case_wall(i, k)
            ));
            out.push_str(&format!(
                "      <properties><property name=\"target_seconds\" value=\"{}\"/></properties>\n",
                seconds(c)
            ));
            match c.outcome {
                Outcome::Fail => {
                    let (message, body) = match &c.failure {
                        Some(f) => (f.message.clone(), f.to_string()),
                        None => ("failed".to_string(), String::new()),
                    };
                    out.push_str(&format!(
                        "      <failure message=\"{}\">{}</failure>\n",
                        xml_escape(&message),
                        xml_escape(&body)
                    ));
                }
                Outcome::Skip => {
                    out.push_str(&format!(
                        "      <skipped message=\"{}\"/>\n",
                        xml_escape(&c.reason())
                    ));
                }
                Outcome::Pass => {}
            }
            out.push_str(&format!(
                "      <system-out>{}</system-out>\n",
                xml_escape(&c.trace.render())
            ));
            out.push_str("    </testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// The scenario files under `paths`: files as given, folders searched recursively for
/// `*.toml` (README files and hidden entries skipped), sorted within each folder.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(format!("{}: no such file or folder", p.display()));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: cannot read the folder: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if name.ends_with(".toml") && !name.to_ascii_lowercase().starts_with("readme") {
            out.push(p);
        }
    }
    Ok(())
}
