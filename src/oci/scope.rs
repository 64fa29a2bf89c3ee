//! The Docker token scope grammar: `type:name:actions`, where the name may itself contain
//! `:` (a registry host with a port), so type and actions are split off the ends. Read by
//! berth's token endpoint and written by every client of an upstream.

use serde::{Deserialize, Serialize};

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// The scope that pulls `repository` (`repository:<name>:pull`).
pub fn pull(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// The scope that pulls and pushes `repository` (`repository:<name>:pull,push`).
pub fn pull_push(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// Parses one scope string; `None` when it is not of the `type:name:actions` form.
pub fn parse_one(s: &str) -> Option<Access> {
    let (kind, rest) = s.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    if kind.is_empty() || name.is_empty() || name.len() > 512 {
        return None;
    }
    Some(Access {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: actions
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Parses every `scope` value of a request: each may hold several scopes separated by
/// spaces. Malformed ones are dropped (they grant nothing).
pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Access> {
    values
        .into_iter()
        .flat_map(|v| v.split(' '))
        .filter(|s| !s.is_empty())
        .filter_map(parse_one)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_ports_survive() {
        let a = parse_one("repository:proxy/acme/reg.example:5000/acme/api:pull,push").unwrap();
        assert_eq!(a.kind, "repository");
        assert_eq!(a.name, "proxy/acme/reg.example:5000/acme/api");
        assert_eq!(a.actions, vec!["pull", "push"]);
        let all = parse_all([
            "repository:a/b:pull repository:c:*",
            "registry:catalog:*",
            "junk",
        ]);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].actions, vec!["*"]);
        assert!(parse_one("repository::pull").is_none());
        let a = parse_one(&pull("reg.example:5000/acme/api")).unwrap();
        assert_eq!(
            (a.name.as_str(), a.actions.as_slice()),
            ("reg.example:5000/acme/api", &["pull".to_string()][..])
        );
        assert_eq!(
            parse_one(&pull_push("a/b")).unwrap().actions,
            vec!["pull", "push"]
        );
    }
}
