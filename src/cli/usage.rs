//! `berth usage`: who pulled which images and versions, how often and how many bytes, per
//! license or API key, from the state store's pull records (or `--server`'s).

use std::process::ExitCode;

use super::output::{self, or_dash, table};
use super::plane::{self, Failure, Plane};
use super::Global;
use crate::control::usage::UsageReport;

#[derive(clap::Args)]
pub struct Args {
    /// Only this license or API key (its id).
    #[arg(long)]
    license: Option<String>,
    /// Only pulls of this app.
    #[arg(long)]
    app: Option<String>,
    /// Only pulls since: a duration back from now (30d), a date (2026-11-01) or an RFC 3339
    /// time.
    #[arg(long, default_value = "30d")]
    since: String,
}

pub fn run(g: &Global, args: Args) -> ExitCode {
    let (rt, plane) = match plane::open(g) {
        Ok(p) => p,
        Err(code) => return code,
    };
    plane::finish(rt.block_on(exec(&plane, g.json, args)))
}

async fn exec(plane: &Plane, json: bool, args: Args) -> Result<(), Failure> {
    let report = plane
        .usage(args.license, args.app, Some(args.since))
        .await?;
    if json {
        return output::json(&report);
    }
    output::say(&human(&report))
}

fn human(r: &UsageReport) -> String {
    let mut out = pulls(r);
    // Hosted storage: what each app's pushed images take, against its quota.
    if r.hosted
        .iter()
        .any(|h| h.used_bytes > 0 || h.quota_bytes.is_some())
    {
        let rows: Vec<Vec<String>> = r
            .hosted
            .iter()
            .map(|h| {
                vec![
                    h.app.clone(),
                    crate::airgap::human(h.used_bytes),
                    h.quota_bytes
                        .map_or_else(|| "-".to_string(), crate::airgap::human),
                ]
            })
            .collect();
        out.push_str(
            "
Hosted storage:

",
        );
        out.push_str(&table(&["APP", "USED", "QUOTA"], &rows));
    }
    out
}

fn pulls(r: &UsageReport) -> String {
    let mut out = match &r.since {
        Some(s) => format!("Pulls since {s}:\n\n"),
        None => "Pulls:\n\n".to_string(),
    };
    if r.subjects.is_empty() {
        out.push_str("none\n");
        return out;
    }
    let rows: Vec<Vec<String>> = r
        .subjects
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.kind.clone(),
                if s.name.is_empty() {
                    "-".into()
                } else {
                    s.name.clone()
                },
                s.app.clone(),
                s.pulls.to_string(),
                crate::airgap::human(s.bytes),
                or_dash(s.last_pull.as_deref()),
            ]
        })
        .collect();
    out.push_str(&table(
        &["ID", "KIND", "NAME", "APP", "PULLS", "BYTES", "LAST PULL"],
        &rows,
    ));
    for s in r.subjects.iter().filter(|s| !s.images.is_empty()) {
        out.push_str(&format!("\n{} ({}, {}):\n", s.id, s.name, s.app));
        let rows: Vec<Vec<String>> = s
            .images
            .iter()
            .map(|i| {
                vec![
                    format!("  {}", i.image),
                    i.reference.clone(),
                    i.digest.clone(),
                    i.pulls.to_string(),
                    i.last_pull.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["  IMAGE", "REFERENCE", "DIGEST", "PULLS", "LAST PULL"],
            &rows,
        ));
    }
    out
}
