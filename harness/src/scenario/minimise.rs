//! `hil fixture minimise`: shrinks a failing scenario while the same failure remains, the way
//! delta debugging does (Zeller's ddmin over the steps), then shrinks what is left: durations
//! and timeouts halved, repeat counts and sizes halved, devices no step needs removed.
//!
//! The scenario is edited as a TOML document (comments and layout of what stays are kept) and
//! re-read by the scenario parser for every candidate; a candidate that does not parse, or
//! fails differently, or passes, is dropped. "The same failure" is the first failing case's
//! step and message with durations and times written as `<t>` (a shorter wait changes "within
//! 2m" but not what failed); every other number must stay the same, so "app is 3, not 5" is not
//! the same failure as "app is 4, not 5".

use std::path::Path;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Value};

use super::parse::parse;
use super::runner::ScenarioResult;
use super::Scenario;

/// What a minimisation did.
#[derive(Debug, Clone)]
pub struct Minimised {
    /// The smallest scenario found, as TOML.
    pub text: String,
    /// The failure it keeps (normalised).
    pub failure: String,
    pub steps_before: usize,
    pub steps_after: usize,
    /// Scenario runs it took.
    pub runs: usize,
}

/// Most runs one minimisation may take (each is a whole scenario in virtual time).
pub const MAX_RUNS: usize = 3000;

/// The failure a run shows, normalised for comparison: `None` when every case passed.
pub fn signature(result: &ScenarioResult) -> Option<String> {
    let case = result.cases.iter().find(|c| c.failure.is_some())?;
    let f = case.failure.as_ref()?;
    Some(format!(
        "{} | {} | {}",
        normalise(&case.name),
        normalise(&f.step_text),
        normalise(&f.message)
    ))
}

/// Durations and times (`2m`, `1.500s`, `1m30s`, `200ms`) become `<t>`; other numbers stay.
pub fn normalise(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let starts_token = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        if chars[i].is_ascii_digit() && starts_token {
            // A run of number+unit pairs: "1m30s", "1.500s", "200ms".
            let mut j = i;
            let mut time = false;
            loop {
                let n0 = j;
                while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                    j += 1;
                }
                if j == n0 {
                    break;
                }
                let u0 = j;
                while j < chars.len() && chars[j].is_ascii_alphabetic() {
                    j += 1;
                }
                let unit: String = chars[u0..j].iter().collect();
                if matches!(unit.as_str(), "ms" | "s" | "m" | "h" | "d") {
                    time = true;
                } else {
                    j = u0;
                    break;
                }
            }
            if time {
                out.push_str("<t>");
                i = j;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Runs a scenario and reports its failure signature (`None`: it passed).
pub type Runner<'a> = dyn FnMut(&Scenario) -> Option<String> + 'a;

struct Search<'a, 'r> {
    file: &'a Path,
    want: String,
    runs: usize,
    run: &'a mut Runner<'r>,
}

impl Search<'_, '_> {
    /// Whether `doc` still fails the same way.
    fn same(&mut self, doc: &DocumentMut) -> bool {
        if self.runs >= MAX_RUNS {
            return false;
        }
        let text = doc.to_string();
        let Ok(scenario) = parse(&text, self.file) else {
            return false;
        };
        self.runs += 1;
        (self.run)(&scenario).as_deref() == Some(self.want.as_str())
    }
}

fn steps(doc: &DocumentMut) -> Vec<toml_edit::Table> {
    doc.get("step")
        .and_then(Item::as_array_of_tables)
        .map(|a| a.iter().cloned().collect())
        .unwrap_or_default()
}

fn with_steps(doc: &DocumentMut, steps: &[toml_edit::Table]) -> DocumentMut {
    let mut d = doc.clone();
    if steps.is_empty() {
        d.remove("step");
    } else {
        let mut a = ArrayOfTables::new();
        for t in steps {
            a.push(t.clone());
        }
        d.insert("step", Item::ArrayOfTables(a));
    }
    d
}

/// Shrinks `text` (a scenario that fails) while `run` reports the same failure.
pub fn minimise(text: &str, file: &Path, run: &mut Runner) -> Result<Minimised, String> {
    let scenario = parse(text, file).map_err(|e| e.to_string())?;
    let want = run(&scenario).ok_or_else(|| {
        format!(
            "{}: the scenario passes: there is no failure to keep",
            file.display()
        )
    })?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let mut search = Search {
        file,
        want: want.clone(),
        runs: 1,
        run,
    };
    let steps_before = steps(&doc).len();

    // ddmin over the steps: drop chunks while the failure stays.
    let mut current = steps(&doc);
    let mut n = 2usize;
    while !current.is_empty() {
        let chunk = current.len().div_ceil(n.min(current.len()));
        let mut reduced = false;
        let mut start = 0;
        while start < current.len() {
            let end = (start + chunk).min(current.len());
            let candidate: Vec<_> = current[..start]
                .iter()
                .chain(&current[end..])
                .cloned()
                .collect();
            if search.same(&with_steps(&doc, &candidate)) {
                current = candidate;
                n = n.saturating_sub(1).max(2);
                reduced = true;
                break;
            }
            start = end;
        }
        if !reduced {
            if chunk <= 1 {
                break;
            }
            n = (n * 2).min(current.len());
        }
    }
    doc = with_steps(&doc, &current);

    // Devices no remaining step needs.
    if let Some(devices) = doc
        .get("cloud")
        .and_then(|c| c.get("device"))
        .and_then(Item::as_array_of_tables)
        .cloned()
    {
        let mut kept: Vec<toml_edit::Table> = devices.iter().cloned().collect();
        let mut i = 0;
        while kept.len() > 1 && i < kept.len() {
            let mut candidate = kept.clone();
            candidate.remove(i);
            let mut d = doc.clone();
            let mut a = ArrayOfTables::new();
            for t in &candidate {
                a.push(t.clone());
            }
            d["cloud"]["device"] = Item::ArrayOfTables(a);
            if search.same(&d) {
                kept = candidate;
                doc = d;
            } else {
                i += 1;
            }
        }
    }

    // Within each step: shorter durations, smaller counts and sizes.
    let count = steps(&doc).len();
    for index in 0..count {
        for key in ["duration", "timeout", "off_for", "times", "max", "size"] {
            loop {
                let mut s = steps(&doc);
                let Some(item) = s[index].get(key) else {
                    break;
                };
                let Some(smaller) = halve(item) else {
                    break;
                };
                s[index].insert(key, smaller);
                let d = with_steps(&doc, &s);
                if search.same(&d) {
                    doc = d;
                } else {
                    break;
                }
            }
        }
    }

    let steps_after = steps(&doc).len();
    let header = format!(
        "# Minimised by `hil fixture minimise` from {}: {steps_after} of {steps_before} steps, {} runs.\n# Failure kept: {want}\n",
        file.display(),
        search.runs
    );
    let mut text = format!("{header}{doc}");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(Minimised {
        text,
        failure: want,
        steps_before,
        steps_after,
        runs: search.runs,
    })
}

/// Half of a duration string ("10m" -> "5m", "1s" -> "500ms"; nothing under 1 ms) or of an
/// integer (nothing under 1).
fn halve(item: &Item) -> Option<Item> {
    match item.as_value()? {
        Value::Integer(i) => {
            let v = *i.value();
            (v > 1).then(|| toml_edit::value(v / 2))
        }
        Value::String(s) => {
            if let Some(d) = super::model::parse_duration(s.value()) {
                let ms = u64::try_from(d.as_millis()).ok()?;
                return (ms >= 2).then(|| toml_edit::value(format_ms(ms / 2)));
            }
            let bytes = super::units::parse_size(s.value())?;
            (bytes >= 2).then(|| toml_edit::value(super::units::format_size(bytes / 2)))
        }
        _ => None,
    }
}

fn format_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_normalised_and_other_numbers_kept() {
        assert_eq!(
            normalise("not reached within 2m (waited from 1.500s to 121.500s)"),
            "not reached within <t> (waited from <t> to <t>)"
        );
        assert_eq!(normalise("app is 3, not 5"), "app is 3, not 5");
        assert_eq!(normalise("wait 1m30s then 200ms"), "wait <t> then <t>");
        assert_eq!(normalise("spark/flash/status x2"), "spark/flash/status x2");
        assert_eq!(normalise("op 12 torn"), "op 12 torn");
    }
}
