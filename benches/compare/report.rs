//! Collects raw figures per (metric, system) and renders the medians, ranges, ratios and
//! targets as a plain-text table.

/// The optimisation targets from the benchmarks issue, checked against berth's figures.
#[derive(Clone, Copy)]
pub enum Goal {
    /// Median of berth / median of the named system, at least this.
    RatioAtLeast(&'static str, f64),
    RatioAtMost(&'static str, f64),
    /// Berth's median at least this.
    AtLeast(f64),
    /// Berth's worst run at most this: a peak or a count must hold every time.
    AtMost(f64),
}

struct Row {
    label: String,
    unit: &'static str,
    /// (system, one figure per run) in the order systems first reported.
    values: Vec<(String, Vec<f64>)>,
    /// Systems whose figures here are copies of another row's (the row's reference),
    /// left out of the raw figures so no run is listed twice.
    copied: Vec<String>,
    /// (system, text) shown instead of a figure where a system has none, such as
    /// "unsupported (status 404)" for an endpoint a server does not offer (yet).
    notes: Vec<(String, String)>,
    goal: Option<Goal>,
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} [{}–{}]", num(median(v)), num(min), num(max))
}

impl Report {
    pub fn add(&mut self, label: &str, unit: &'static str, system: &str, value: f64) {
        self.push(label, unit, system, value);
    }

    /// `value` as `system`'s figure in row `label` when it was recorded (and is listed) in
    /// another row already: the control phase's variants each have the config-file
    /// variant of the same run as their reference.
    pub fn add_reference(&mut self, label: &str, unit: &'static str, system: &str, value: f64) {
        let row = self.push(label, unit, system, value);
        if !row.copied.iter().any(|s| s == system) {
            row.copied.push(system.to_string());
        }
    }

    /// `text` in `system`'s cell of row `label` (kept once), for a figure that could not
    /// be measured; a figure the system does have in that row is shown instead.
    pub fn note(&mut self, label: &str, unit: &'static str, system: &str, text: &str) {
        let idx = self.row(label, unit);
        let row = &mut self.rows[idx];
        if !row.notes.iter().any(|(s, t)| s == system && t == text) {
            row.notes.push((system.to_string(), text.to_string()));
        }
    }

    fn row(&mut self, label: &str, unit: &'static str) -> usize {
        match self.rows.iter().position(|r| r.label == label) {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    label: label.to_string(),
                    unit,
                    values: Vec::new(),
                    copied: Vec::new(),
                    notes: Vec::new(),
                    goal: None,
                });
                self.rows.len() - 1
            }
        }
    }

    fn push(&mut self, label: &str, unit: &'static str, system: &str, value: f64) -> &mut Row {
        let idx = self.row(label, unit);
        let row = &mut self.rows[idx];
        match row.values.iter_mut().find(|(s, _)| s == system) {
            Some((_, v)) => v.push(value),
            None => row.values.push((system.to_string(), vec![value])),
        }
        row
    }

    pub fn goal(&mut self, label: &str, goal: Goal) {
        if let Some(r) = self.rows.iter_mut().find(|r| r.label == label) {
            r.goal = Some(goal);
        }
    }

    pub fn render(&self) -> String {
        let header = [
            "metric",
            "unit",
            "berth",
            "dist",
            "reference",
            "berth/dist",
            "berth/ref",
            "target",
            "met",
        ];
        let mut lines: Vec<[String; 9]> = vec![header.map(String::from)];
        for r in &self.rows {
            let get = |s: &str| r.values.iter().find(|(n, _)| n == s).map(|(_, v)| v);
            let berth = get("berth");
            let dist = get("dist");
            let reference = r.values.iter().find(|(n, _)| n != "berth" && n != "dist");
            let ratio = |other: Option<&Vec<f64>>| match (berth, other) {
                (Some(b), Some(o)) => format!("{:.2}x", median(b) / median(o)),
                _ => "-".into(),
            };
            let (target, met) = match (r.goal, berth) {
                (Some(g), Some(b)) => {
                    let med = median(b);
                    let worst_high = b.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    match g {
                        Goal::RatioAtLeast(s, x) => {
                            let o = get(s).map_or(f64::NAN, |v| median(v));
                            (format!(">= {x:.2}x {s}"), med / o >= x)
                        }
                        Goal::RatioAtMost(s, x) => {
                            let o = get(s).map_or(f64::NAN, |v| median(v));
                            (format!("<= {x:.2}x {s}"), med / o <= x)
                        }
                        Goal::AtLeast(x) => (format!(">= {}", num(x)), med >= x),
                        Goal::AtMost(x) => (format!("<= {} every run", num(x)), worst_high <= x),
                    }
                }
                _ => (String::new(), true),
            };
            let met = if r.goal.is_none() {
                String::new()
            } else if met {
                "yes".into()
            } else {
                "NO".into()
            };
            let note = |s: &str| {
                let notes: Vec<&str> = r
                    .notes
                    .iter()
                    .filter(|(n, _)| n == s)
                    .map(|(_, t)| t.as_str())
                    .collect();
                if notes.is_empty() {
                    "-".to_string()
                } else {
                    notes.join(", ")
                }
            };
            lines.push([
                r.label.clone(),
                r.unit.to_string(),
                berth.map_or_else(|| note("berth"), |v| cell(v)),
                dist.map_or_else(|| note("dist"), |v| cell(v)),
                reference.map_or("-".into(), |(n, v)| format!("{n} {}", cell(v))),
                ratio(dist),
                ratio(reference.map(|(_, v)| v)),
                target,
                met,
            ]);
        }
        let mut widths = [0usize; 9];
        for l in &lines {
            for (w, c) in widths.iter_mut().zip(l) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::from("median [min–max] of the runs; ratios are of medians\n\n");
        for (i, l) in lines.iter().enumerate() {
            let cells: Vec<String> = l
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
            if i == 0 {
                let total = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        out.push_str("\nraw figures, in run order:\n");
        for r in &self.rows {
            for (s, v) in r.values.iter().filter(|(s, _)| !r.copied.contains(s)) {
                let v: Vec<String> = v.iter().map(|x| num(*x)).collect();
                out.push_str(&format!(
                    "  {} [{}] {s}: {}\n",
                    r.label,
                    r.unit,
                    v.join(" ")
                ));
            }
            for (s, t) in &r.notes {
                out.push_str(&format!("  {} [{}] {s}: {t}\n", r.label, r.unit));
            }
        }
        out
    }
}
