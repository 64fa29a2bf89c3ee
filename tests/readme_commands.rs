//! The README's commands are real: every `berth …` line in its code blocks names a
//! subcommand the binary has, and every flag it shows is one that subcommand (or the
//! global options) accepts, as the real binary's `--help` lists them. A renamed or removed
//! flag fails here, naming the README line.

use std::process::Command;

struct Shown {
    line: usize,
    text: String,
}

/// The `berth` command lines inside fenced code blocks, continuations joined.
fn commands(readme: &str) -> Vec<Shown> {
    let mut out = Vec::new();
    let mut in_code = false;
    let mut pending: Option<Shown> = None;
    for (i, raw) in readme.lines().enumerate() {
        if raw.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        let line = raw.split(" #").next().unwrap_or("").trim_end();
        if let Some(mut p) = pending.take() {
            p.text.push(' ');
            p.text.push_str(line.trim().trim_end_matches('\\'));
            if line.ends_with('\\') {
                pending = Some(p);
            } else {
                out.push(p);
            }
            continue;
        }
        let l = line.trim_start().trim_start_matches("$ ");
        let rest = l
            .strip_prefix("berth ")
            .or_else(|| l.strip_prefix("./target/release/berth "));
        if let Some(rest) = rest {
            let s = Shown {
                line: i + 1,
                text: rest.trim_end_matches('\\').to_string(),
            };
            if line.ends_with('\\') {
                pending = Some(s);
            } else {
                out.push(s);
            }
        }
    }
    out
}

fn help(args: &[&str]) -> Option<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run berth");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn every_berth_command_in_the_readme_names_real_flags() {
    let readme = include_str!("../README.md");
    let shown = commands(readme);
    assert!(shown.len() >= 30, "only {} commands found", shown.len());
    let global = help(&[]).expect("berth --help");
    for s in &shown {
        let tokens: Vec<String> = s
            .text
            .split_whitespace()
            .map(|t| {
                t.trim_matches(|c| c == '[' || c == ']' || c == '|')
                    .to_string()
            })
            .collect();
        // The subcommand path: the leading plain words; the longest prefix berth knows.
        let words: Vec<&str> = tokens
            .iter()
            .map(String::as_str)
            .take_while(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
            .collect();
        let (path, text) = (0..=words.len())
            .rev()
            .find_map(|n| help(&words[..n]).map(|h| (&words[..n], h)))
            .unwrap_or_else(|| panic!("README line {}: berth {:?}", s.line, words));
        assert!(
            !path.is_empty(),
            "README line {}: `berth {}` names no subcommand",
            s.line,
            s.text
        );
        for t in &tokens {
            for part in t.split('|') {
                let flag = part.split('=').next().unwrap_or("");
                let is_flag = (flag.starts_with("--") && flag.len() > 2)
                    || (flag.len() == 2 && flag.starts_with('-') && flag != "--");
                if !is_flag
                    || !flag[1..]
                        .trim_start_matches('-')
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    continue;
                }
                let listed = |h: &str| {
                    h.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '<')
                        .any(|w| w == flag)
                };
                assert!(
                    listed(&text) || listed(&global),
                    "README line {}: `berth {}` shows {flag}, which `berth {} --help` does not list",
                    s.line,
                    s.text,
                    path.join(" ")
                );
            }
        }
    }
}
