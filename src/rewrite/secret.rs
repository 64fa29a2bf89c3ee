//! The `kubernetes.io/dockerconfigjson` Secret that lets a cluster pull from berth (or the airgap registry).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// A Secret manifest named `name` whose `.dockerconfigjson` holds credentials for
/// `registry_host` (`auths.<host>.{username,password,auth}`, `auth` being
/// base64 of `username:password`, as `docker login` writes it).
pub fn pull_secret_yaml(
    name: &str,
    namespace: Option<&str>,
    registry_host: &str,
    username: &str,
    password: &str,
) -> String {
    let auth = STANDARD.encode(format!("{username}:{password}"));
    let config = serde_json::json!({
        "auths": {
            registry_host: {
                "username": username,
                "password": password,
                "auth": auth,
            }
        }
    });
    let data = STANDARD.encode(config.to_string());
    let mut out = String::from("apiVersion: v1\nkind: Secret\nmetadata:\n");
    out.push_str(&format!("  name: {}\n", scalar(name)));
    if let Some(ns) = namespace {
        out.push_str(&format!("  namespace: {}\n", scalar(ns)));
    }
    out.push_str("type: kubernetes.io/dockerconfigjson\ndata:\n");
    out.push_str(&format!("  .dockerconfigjson: {data}\n"));
    out
}

/// Kubernetes names are DNS labels and safe unquoted; anything odd is written as a
/// JSON string, which YAML reads as a double-quoted scalar.
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().any(|b| b.is_ascii_lowercase());
    if plain {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_decodes_to_docker_config() {
        let y = pull_secret_yaml(
            "berth-pull",
            Some("acme"),
            "images.acme.test",
            "lic-1",
            "p:w\"",
        );
        let v: serde_yaml_ng::Value = match serde_yaml_ng::from_str(&y) {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{y}"),
        };
        assert_eq!(v["type"].as_str(), Some("kubernetes.io/dockerconfigjson"));
        assert_eq!(v["metadata"]["namespace"].as_str(), Some("acme"));
        assert_eq!(v["metadata"]["name"].as_str(), Some("berth-pull"));
        let data = v["data"][".dockerconfigjson"].as_str().unwrap_or_default();
        let json: serde_json::Value =
            serde_json::from_slice(&STANDARD.decode(data).unwrap_or_default()).unwrap_or_default();
        let a = &json["auths"]["images.acme.test"];
        assert_eq!(a["username"], "lic-1");
        assert_eq!(a["password"], "p:w\"");
        assert_eq!(a["auth"], STANDARD.encode("lic-1:p:w\""));
        let y = pull_secret_yaml("123", None, "h", "u", "p");
        assert!(
            y.contains("name: \"123\"\n") && !y.contains("namespace"),
            "{y}"
        );
    }
}
