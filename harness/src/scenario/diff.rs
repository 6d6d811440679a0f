//! Fidelity as a number: compares the traces of the same scenarios run on two targets (the
//! JSON reports of `hil run --json` and `hil rack run --json`) and scores how alike they are.
//!
//! What is compared is what both targets observe the same way: the cloud's event stream
//! (`event ...` lines), power (`power on/off`), boots, resets and OTA milestones. A kind of
//! entry one trace has none of (a board reports no OTA progress of its own) is left out of
//! that case's comparison and named. Times are not compared: entries are aligned by order (a
//! longest common subsequence), so a board's wall-clock times and the emulator's virtual times
//! line up. Notes, steps, checks and skips are target-specific and ignored.
//!
//! The score of a case is `2 * matched / (entries in A + entries in B)` (1 when both have
//! none); the overall score weighs each case by its entries.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

/// The kinds of trace entries compared.
pub const KINDS: [&str; 5] = ["event", "power", "boot", "reset", "ota"];

/// One case present in both reports.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseDiff {
    pub scenario: String,
    pub case: String,
    /// Entries compared on each side.
    pub a_len: usize,
    pub b_len: usize,
    pub matched: usize,
    /// Differences in order: `(true, line)` only in A, `(false, line)` only in B.
    pub only: Vec<(bool, String)>,
    /// Kinds left out because one side has none of them.
    pub left_out: Vec<String>,
    /// Not compared: a side skipped steps (its trace stops where the target could not follow
    /// the scenario), with which side.
    pub skipped: Option<String>,
}

impl CaseDiff {
    pub fn score(&self) -> f64 {
        let total = self.a_len + self.b_len;
        if total == 0 {
            1.0
        } else {
            (2 * self.matched) as f64 / total as f64
        }
    }
}

/// The comparison of two reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceDiff {
    pub cases: Vec<CaseDiff>,
    /// Scenario/case names in only one report: `(true, name)` only in A.
    pub unmatched: Vec<(bool, String)>,
}

impl TraceDiff {
    /// Weighted by entries; 1 when nothing was compared.
    pub fn score(&self) -> f64 {
        let total: usize = self.cases.iter().map(|c| c.a_len + c.b_len).sum();
        if total == 0 {
            return 1.0;
        }
        let matched: usize = self.cases.iter().map(|c| c.matched).sum();
        (2 * matched) as f64 / total as f64
    }

    /// No difference in any compared case, and every case in both.
    pub fn identical(&self) -> bool {
        self.unmatched.is_empty() && self.cases.iter().all(|c| c.only.is_empty())
    }

    /// Cases compared (not skipped on either side).
    pub fn compared(&self) -> usize {
        self.cases.iter().filter(|c| c.skipped.is_none()).count()
    }
}

impl fmt::Display for TraceDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.cases {
            if let Some(side) = &c.skipped {
                writeln!(
                    f,
                    "{} [{}]: not compared (skipped steps on {side})",
                    c.scenario, c.case
                )?;
                continue;
            }
            writeln!(
                f,
                "{} [{}]: score {:.3} ({} of {} / {} entries match){}",
                c.scenario,
                c.case,
                c.score(),
                c.matched,
                c.a_len,
                c.b_len,
                if c.left_out.is_empty() {
                    String::new()
                } else {
                    format!("; not compared: {}", c.left_out.join(", "))
                }
            )?;
            for (in_a, line) in &c.only {
                writeln!(
                    f,
                    "  {} {line}",
                    if *in_a { "- A only:" } else { "+ B only:" }
                )?;
            }
        }
        for (in_a, name) in &self.unmatched {
            writeln!(f, "{name}: only in {}", if *in_a { "A" } else { "B" })?;
        }
        write!(
            f,
            "{} of {} cases compared; score {:.3}: {}",
            self.compared(),
            self.cases.len(),
            self.score(),
            if self.identical() {
                "no difference".to_string()
            } else {
                let n: usize = self.cases.iter().map(|c| c.only.len()).sum();
                format!(
                    "{n} differing entries, {} unmatched cases",
                    self.unmatched.len()
                )
            }
        )
    }
}

/// A trace line's timestamp (milliseconds) and, if it is of a compared kind, (kind, text
/// without the timestamp).
fn entry(line: &str) -> Option<(u64, String, String)> {
    let line = line.trim_start();
    let (stamp, rest) = line.split_once("  ")?;
    let seconds: f64 = stamp.strip_suffix('s')?.parse().ok()?; // else a header line
    let ms = (seconds * 1000.0).round() as u64;
    let rest = rest.trim_start();
    let kind = rest.split(' ').next()?;
    // `[device] kind ...` in scenarios with several devices.
    let kind = if kind.starts_with('[') {
        rest.split(' ').nth(1)?
    } else {
        kind
    };
    KINDS
        .contains(&kind)
        .then(|| (ms, kind.to_string(), rest.to_string()))
}

/// The compared entries of a trace, in order.
fn entries(trace: &[String]) -> Vec<(String, String)> {
    trace
        .iter()
        .filter_map(|l| entry(l))
        .map(|(_, k, t)| (k, t))
        .collect()
}

/// One case of a report: scenario name, case name, whether it was skipped, trace lines.
type ReportCase = (String, String, bool, Vec<String>);

/// The cases of a report.
fn cases(report: &Value, which: &str) -> Result<Vec<ReportCase>, String> {
    let scenarios = report
        .get("scenarios")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{which}: not a report of `hil run --json` or `hil rack run --json` (no `scenarios` list)"))?;
    let mut out = Vec::new();
    for s in scenarios {
        let name = s
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{which}: a scenario without `name`"))?;
        let Some(list) = s.get("cases").and_then(Value::as_array) else {
            continue;
        };
        for c in list {
            let case = c.get("name").and_then(Value::as_str).unwrap_or("main");
            let trace = c
                .get("trace")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{which}: case {name} [{case}] has no `trace`"))?
                .iter()
                .filter_map(|l| l.as_str().map(str::to_string))
                .collect();
            let skipped = c.get("outcome").and_then(Value::as_str) == Some("skip");
            out.push((name.to_string(), case.to_string(), skipped, trace));
        }
    }
    Ok(out)
}

/// Longest common subsequence of `a` and `b`: the pairs of matched indices, in order.
fn lcs(a: &[String], b: &[String]) -> Vec<(usize, usize)> {
    let (n, m) = (a.len(), b.len());
    let mut t = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[at(i, j)] = if a[i] == b[j] {
                t[at(i + 1, j + 1)] + 1
            } else {
                t[at(i + 1, j)].max(t[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n && j < m {
        if a[i] == b[j] {
            out.push((i, j));
            i += 1;
            j += 1;
        } else if t[at(i + 1, j)] >= t[at(i, j + 1)] {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Longest trace compared entry by entry (beyond it, a case is compared on its first entries
/// only, to bound the work).
const MAX_ENTRIES: usize = 4000;

fn compare(scenario: &str, case: &str, a: &[String], b: &[String]) -> CaseDiff {
    let a = entries(a);
    let b = entries(b);
    let kinds_a: BTreeSet<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
    let kinds_b: BTreeSet<&str> = b.iter().map(|(k, _)| k.as_str()).collect();
    let left_out: Vec<String> = kinds_a
        .symmetric_difference(&kinds_b)
        .map(|k| k.to_string())
        .collect();
    let keep = |v: Vec<(String, String)>| -> Vec<String> {
        v.into_iter()
            .filter(|(k, _)| !left_out.contains(k))
            .map(|(_, t)| t)
            .take(MAX_ENTRIES)
            .collect()
    };
    let (a, b) = (keep(a), keep(b));
    let pairs = lcs(&a, &b);
    let mut only = Vec::new();
    let (mut i, mut j) = (0, 0);
    for &(pi, pj) in pairs.iter().chain(std::iter::once(&(a.len(), b.len()))) {
        while i < pi {
            only.push((true, a[i].clone()));
            i += 1;
        }
        while j < pj {
            only.push((false, b[j].clone()));
            j += 1;
        }
        i += 1;
        j += 1;
    }
    CaseDiff {
        scenario: scenario.to_string(),
        case: case.to_string(),
        a_len: a.len(),
        b_len: b.len(),
        matched: pairs.len(),
        only,
        left_out,
        skipped: None,
    }
}

/// Compares two JSON reports.
pub fn diff(a: &Value, b: &Value) -> Result<TraceDiff, String> {
    let ca = cases(a, "A")?;
    let cb = cases(b, "B")?;
    let mut out = TraceDiff {
        cases: Vec::new(),
        unmatched: Vec::new(),
    };
    for (s, c, skip_a, ta) in &ca {
        match cb.iter().find(|(s2, c2, _, _)| s2 == s && c2 == c) {
            Some((_, _, skip_b, tb)) => {
                let mut d = compare(s, c, ta, tb);
                d.skipped = match (skip_a, skip_b) {
                    (true, true) => Some("both".into()),
                    (true, false) => Some("A".into()),
                    (false, true) => Some("B".into()),
                    (false, false) => None,
                };
                if d.skipped.is_some() {
                    d.only.clear();
                    d.a_len = 0;
                    d.b_len = 0;
                    d.matched = 0;
                }
                out.cases.push(d);
            }
            None => out.unmatched.push((true, format!("{s} [{c}]"))),
        }
    }
    for (s, c, _, _) in &cb {
        if !ca.iter().any(|(s2, c2, _, _)| s2 == s && c2 == c) {
            out.unmatched.push((false, format!("{s} [{c}]")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(trace: &[&str]) -> Value {
        json!({"scenarios": [{"name": "s", "cases": [{"name": "main", "trace": trace}]}]})
    }

    #[test]
    fn times_notes_and_steps_do_not_count_only_order_does() {
        let a = report(&[
            "scenario x",
            "   0.000s  power on",
            "   0.500s  note dev: booted",
            "   1.000s  event cloud spark/status \"online\"",
            "   1.000s  step 1: wait.state online",
        ]);
        let b = report(&[
            "   0.000s  power on",
            "   0.012s  event cloud spark/status \"online\"",
            "   0.013s  note board: boot",
        ]);
        let d = diff(&a, &b).unwrap();
        assert!(d.identical(), "{d}");
        assert_eq!(d.score(), 1.0);
    }

    #[test]
    fn a_missing_and_an_extra_event_are_shown_and_lower_the_score() {
        let a = report(&[
            "   0.0s  event cloud a \"1\"",
            "   0.1s  event cloud b \"2\"",
            "   0.2s  event cloud c \"3\"",
        ]);
        let b = report(&[
            "   0.0s  event cloud a \"1\"",
            "   0.2s  event cloud c \"3\"",
            "   0.3s  event cloud d \"4\"",
        ]);
        let d = diff(&a, &b).unwrap();
        assert!(!d.identical());
        assert_eq!(
            d.cases[0].only,
            vec![
                (true, "event cloud b \"2\"".to_string()),
                (false, "event cloud d \"4\"".to_string())
            ]
        );
        assert!((d.score() - 4.0 / 6.0).abs() < 1e-9);
        assert!(d.to_string().contains("- A only: event cloud b"), "{d}");
    }

    #[test]
    fn a_case_skipped_on_one_side_is_not_compared() {
        let a = report(&["   0.0s  event cloud a \"1\""]);
        let mut b = report(&[]);
        b["scenarios"][0]["cases"][0]["outcome"] = json!("skip");
        let d = diff(&a, &b).unwrap();
        assert!(d.identical());
        assert_eq!(d.compared(), 0);
        assert!(
            d.to_string().contains("not compared (skipped steps on B)"),
            "{d}"
        );
    }

    #[test]
    fn a_kind_one_side_lacks_is_left_out_and_named() {
        let a = report(&["   0.0s  ota in_progress 0/100", "   0.0s  power on"]);
        let b = report(&["   0.0s  power on"]);
        let d = diff(&a, &b).unwrap();
        assert!(d.identical());
        assert_eq!(d.cases[0].left_out, vec!["ota".to_string()]);
    }

    #[test]
    fn cases_in_one_report_only_are_listed_and_bad_reports_refused() {
        let a = report(&[]);
        let b = json!({"scenarios": []});
        let d = diff(&a, &b).unwrap();
        assert_eq!(d.unmatched, vec![(true, "s [main]".to_string())]);
        assert!(!d.identical());
        assert!(diff(&json!({"x": 1}), &b).is_err());
    }
}
