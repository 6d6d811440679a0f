//! The rollout curve: per sample (a minute by default) of virtual time, per cohort, how many
//! devices run each version, are updating, failed, are in safe mode, online, bricked; written
//! as CSV, JSON, SVG and PNG (the PNG drawn by [`super::png`], no font library needed).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::device::CohortCounts;
use super::model::FleetScenario;

/// Series drawn with a colour each, in order.
const PALETTE: [(u8, u8, u8); 8] = [
    (0x1f, 0x77, 0xb4),
    (0xd6, 0x27, 0x28),
    (0x2c, 0xa0, 0x2c),
    (0xff, 0x7f, 0x0e),
    (0x94, 0x67, 0xbd),
    (0x8c, 0x56, 0x4b),
    (0xe3, 0x77, 0xc2),
    (0x7f, 0x7f, 0x7f),
];

/// The recorded curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub name: String,
    pub file: PathBuf,
    pub seed: u64,
    pub sample: Duration,
    /// Cohort names and sizes.
    pub cohorts: Vec<(String, u32)>,
    pub times: Vec<Duration>,
    /// `rows[k][c]`: cohort `c` at `times[k]`.
    pub rows: Vec<Vec<CohortCounts>>,
}

/// One drawn line.
pub(super) struct Series {
    pub label: String,
    pub colour: (u8, u8, u8),
    pub dashed: bool,
    /// Percent of the cohort (or fleet) at each time.
    pub points: Vec<f64>,
}

impl Curve {
    pub fn new(s: &FleetScenario, seed: u64) -> Curve {
        Curve {
            name: s.name.clone(),
            file: s.file.clone(),
            seed,
            sample: s.sample,
            cohorts: s
                .cohorts
                .iter()
                .map(|c| (c.name.clone(), c.count))
                .collect(),
            times: Vec::new(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, at: Duration, counts: &[CohortCounts]) {
        self.times.push(at);
        self.rows.push(counts.to_vec());
    }

    pub fn end(&self) -> Duration {
        self.times.last().copied().unwrap_or_default()
    }

    /// Every version any device ran at a sample, ascending.
    pub fn versions(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .rows
            .iter()
            .flatten()
            .flat_map(|c| c.versions.iter().filter(|(_, n)| **n > 0).map(|(v, _)| *v))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// `minute,cohort,devices,v<N>...,updating,failed,safe_mode,online,bricked`, one row per
    /// sample and cohort (minutes may be fractional when the sample is not a whole minute).
    pub fn csv(&self) -> String {
        let versions = self.versions();
        let mut out = String::from("minute,cohort,devices");
        for v in &versions {
            let _ = write!(out, ",v{v}");
        }
        out.push_str(",updating,failed,safe_mode,online,bricked\n");
        for (t, row) in self.times.iter().zip(&self.rows) {
            for ((name, size), c) in self.cohorts.iter().zip(row) {
                let _ = write!(out, "{},{name},{size}", minutes(*t));
                for v in &versions {
                    let _ = write!(out, ",{}", c.versions.get(v).copied().unwrap_or(0));
                }
                let _ = writeln!(
                    out,
                    ",{},{},{},{},{}",
                    c.updating, c.failed, c.safe_mode, c.online, c.bricked
                );
            }
        }
        out
    }

    /// `{name, seed, sample_seconds, minutes: [...], cohorts: [{name, devices, series: {v3:
    /// [...], updating: [...], ...}}]}`.
    pub fn json(&self) -> serde_json::Value {
        let versions = self.versions();
        let cohorts: Vec<serde_json::Value> = self
            .cohorts
            .iter()
            .enumerate()
            .map(|(ci, (name, size))| {
                let mut series = serde_json::Map::new();
                let col = |f: &dyn Fn(&CohortCounts) -> u32| -> Vec<u32> {
                    self.rows.iter().map(|r| f(&r[ci])).collect()
                };
                for v in &versions {
                    series.insert(
                        format!("v{v}"),
                        json!(col(&|c| c.versions.get(v).copied().unwrap_or(0))),
                    );
                }
                series.insert("updating".into(), json!(col(&|c| c.updating)));
                series.insert("failed".into(), json!(col(&|c| c.failed)));
                series.insert("safe_mode".into(), json!(col(&|c| c.safe_mode)));
                series.insert("online".into(), json!(col(&|c| c.online)));
                series.insert("bricked".into(), json!(col(&|c| c.bricked)));
                json!({"name": name, "devices": size, "series": series})
            })
            .collect();
        json!({
            "name": self.name,
            "file": self.file.display().to_string(),
            "seed": self.seed,
            "sample_seconds": self.sample.as_secs_f64(),
            "minutes": self.times.iter().map(|t| minutes(*t)).collect::<Vec<f64>>(),
            "versions": versions,
            "cohorts": cohorts,
        })
    }

    /// The lines drawn: each cohort's devices per version (percent of the cohort), then the
    /// fleet's updating / failed / safe-mode devices (percent of the fleet) where any.
    pub(super) fn series(&self) -> Vec<Series> {
        let mut out = Vec::new();
        let versions = self.versions();
        let mut colour = PALETTE.iter().cycle();
        let several = self.cohorts.len() > 1;
        for (ci, (name, size)) in self.cohorts.iter().enumerate() {
            for v in &versions {
                let points: Vec<f64> = self
                    .rows
                    .iter()
                    .map(|r| pct(r[ci].versions.get(v).copied().unwrap_or(0), *size))
                    .collect();
                if points.iter().all(|p| *p == 0.0) {
                    continue;
                }
                let label = if several {
                    format!("{name}: v{v}")
                } else {
                    format!("v{v}")
                };
                out.push(Series {
                    label,
                    colour: *colour.next().unwrap_or(&PALETTE[0]),
                    dashed: false,
                    points,
                });
            }
        }
        let fleet: u32 = self.cohorts.iter().map(|(_, n)| *n).sum();
        type Count = fn(&CohortCounts) -> u32;
        let totals: [(&str, Count); 3] = [
            ("updating", |c| c.updating),
            ("failed", |c| c.failed),
            ("safe mode", |c| c.safe_mode),
        ];
        for (label, f) in totals {
            let points: Vec<f64> = self
                .rows
                .iter()
                .map(|r| pct(r.iter().map(f).sum(), fleet))
                .collect();
            if points.iter().all(|p| *p == 0.0) {
                continue;
            }
            out.push(Series {
                label: format!("{label} (fleet)"),
                colour: *colour.next().unwrap_or(&PALETTE[0]),
                dashed: true,
                points,
            });
        }
        out
    }

    /// The x axis: unit name and seconds per unit (hours up to two days, else days).
    pub(super) fn x_unit(&self) -> (&'static str, f64) {
        if self.end() > Duration::from_secs(2 * 86_400) {
            ("days", 86_400.0)
        } else if self.end() > Duration::from_secs(3 * 3600) {
            ("hours", 3600.0)
        } else {
            ("minutes", 60.0)
        }
    }

    /// The curve as an SVG picture (percent of devices over virtual time).
    pub fn svg(&self) -> String {
        let (w, h) = (960.0, 540.0);
        let (left, right, top, bottom) = (70.0, 250.0, 50.0, 60.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let end = self.end().as_secs_f64().max(1.0);
        let (unit, per) = self.x_unit();
        let x = |t: f64| left + pw * t / end;
        let y = |p: f64| top + ph * (1.0 - p / 100.0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">"#
        );
        let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="{left}" y="28" font-size="16" font-weight="bold">{}</text>"#,
            escape(&self.name)
        );
        // Grid and axes.
        for k in 0..=4 {
            let p = k as f64 * 25.0;
            let _ = writeln!(
                out,
                r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{p}%</text>"##,
                y(p),
                left + pw,
                y(p),
                left - 8.0,
                y(p) + 4.0
            );
        }
        for (tick, label) in x_ticks(end, per) {
            let _ = writeln!(
                out,
                r##"<line x1="{:.1}" y1="{top}" x2="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
                x(tick),
                x(tick),
                top + ph,
                x(tick),
                top + ph + 18.0
            );
        }
        let _ = writeln!(
            out,
            r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">virtual time ({unit}); seed {}</text>"#,
            left + pw / 2.0,
            h - 18.0,
            self.seed
        );
        let _ = writeln!(
            out,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">% of devices</text>"#,
            top + ph / 2.0
        );
        for (i, s) in self.series().iter().enumerate() {
            let (r, g, b) = s.colour;
            let mut d = String::new();
            for (k, (t, p)) in self.times.iter().zip(&s.points).enumerate() {
                let cmd = if k == 0 { 'M' } else { 'L' };
                let _ = write!(d, "{cmd}{:.1} {:.1} ", x(t.as_secs_f64()), y(*p));
            }
            let dash = if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                out,
                r##"<path d="{}" fill="none" stroke="#{r:02x}{g:02x}{b:02x}" stroke-width="2"{dash}/>"##,
                d.trim_end()
            );
            let ly = top + 10.0 + i as f64 * 20.0;
            let lx = left + pw + 16.0;
            let _ = writeln!(
                out,
                r##"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="#{r:02x}{g:02x}{b:02x}" stroke-width="3"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"##,
                lx + 24.0,
                lx + 30.0,
                ly + 4.0,
                escape(&s.label)
            );
        }
        out.push_str("</svg>\n");
        out
    }

    /// The curve as a PNG picture (the same drawing as [`Curve::svg`]).
    pub fn png(&self) -> Vec<u8> {
        super::png::draw(self)
    }

    /// Writes `<stem>.csv`, `.json`, `.svg` and `.png` in `dir` (created if missing) and
    /// returns their paths.
    pub fn write_all(&self, dir: &Path, stem: &str) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        let json = serde_json::to_string(&self.json()).unwrap_or_default() + "\n";
        for (ext, bytes) in [
            ("csv", self.csv().into_bytes()),
            ("json", json.into_bytes()),
            ("svg", self.svg().into_bytes()),
            ("png", self.png()),
        ] {
            let path = dir.join(format!("{stem}.{ext}"));
            std::fs::write(&path, bytes)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            written.push(path);
        }
        Ok(written)
    }

    /// When each cohort first had 50 %, 90 %, 95 % and 100 % on each version it did not
    /// start on (lines for a person).
    pub fn milestones(&self) -> Vec<String> {
        self.version_milestones()
            .into_iter()
            .map(|m| {
                let marks: Vec<String> = m
                    .reached
                    .iter()
                    .filter_map(|(p, t)| {
                        t.map(|t| format!("{p}% at {}", crate::scenario::model::format_duration(t)))
                    })
                    .collect();
                let marks = if marks.is_empty() {
                    "never 50%".to_string()
                } else {
                    marks.join(", ")
                };
                format!(
                    "{}: v{} on {} of {} at the end; {marks}",
                    m.cohort, m.version, m.at_end, m.size
                )
            })
            .collect()
    }

    /// For each cohort and each version none of its devices ran at the start but some ran
    /// later: how many run it at the end, and the first sample at which 50, 90, 95 and 100 %
    /// of the cohort ran it (`None`: never).
    pub fn version_milestones(&self) -> Vec<VersionMilestones> {
        let mut out = Vec::new();
        let Some(first) = self.rows.first() else {
            return out;
        };
        for (ci, (name, size)) in self.cohorts.iter().enumerate() {
            for v in self.versions() {
                if first[ci].versions.get(&v).copied().unwrap_or(0) > 0 {
                    continue;
                }
                let reached: Vec<(f64, Option<Duration>)> = MILESTONES
                    .iter()
                    .map(|&p| {
                        let at = self.times.iter().zip(&self.rows).find(|(_, r)| {
                            pct(r[ci].versions.get(&v).copied().unwrap_or(0), *size) >= p
                        });
                        (p, at.map(|(t, _)| *t))
                    })
                    .collect();
                let at_end = self
                    .rows
                    .last()
                    .map(|r| r[ci].versions.get(&v).copied().unwrap_or(0))
                    .unwrap_or(0);
                if at_end == 0 && reached.iter().all(|(_, t)| t.is_none()) {
                    continue;
                }
                out.push(VersionMilestones {
                    cohort: name.clone(),
                    size: *size,
                    version: v,
                    at_end,
                    reached,
                });
            }
        }
        out
    }
}

/// The shares of a cohort [`Curve::version_milestones`] reports the time of, in percent.
pub const MILESTONES: [f64; 4] = [50.0, 90.0, 95.0, 100.0];

/// How a new version spread through one cohort ([`Curve::version_milestones`]).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionMilestones {
    pub cohort: String,
    pub size: u32,
    pub version: u16,
    /// Devices of the cohort running it at the end.
    pub at_end: u32,
    /// (percent, first sample time at or above it) for each of [`MILESTONES`].
    pub reached: Vec<(f64, Option<Duration>)>,
}

fn pct(n: u32, of: u32) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

fn minutes(t: Duration) -> f64 {
    t.as_millis() as f64 / 60_000.0
}

/// About eight ticks on a round step of the unit.
pub(super) fn x_ticks(end: f64, per: f64) -> Vec<(f64, String)> {
    let span = end / per;
    let step = [1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0]
        .into_iter()
        .find(|s| span / s <= 8.0)
        .unwrap_or((span / 8.0).ceil());
    let mut out = Vec::new();
    let mut k = 0.0;
    while k * step <= span + 1e-9 {
        out.push((k * step * per, format!("{}", k * step)));
        k += 1.0;
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
