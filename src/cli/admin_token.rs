//! `berth admin-token create|list|revoke|hash`: the tokens that open the admin API. Stored
//! tokens are created here (printed once); tokens in the config file's `auth.admin_tokens`
//! are kept there as their SHA-256, which `hash` computes from standard input.

use std::io::Read;
use std::process::ExitCode;

use super::output::{self, or_dash, table};
use super::plane::{self, Failure, Plane};
use super::Global;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create an admin token in the state store; prints the token (once).
    Create {
        /// Who or what it is for (the audit trail names it).
        #[arg(long)]
        name: String,
    },
    /// List admin tokens: the state store's and the config file's (by name).
    List,
    /// Revoke a stored admin token (the config file's are removed from the file).
    Revoke {
        /// The admin token's id (`adm_…`, as `list` shows it).
        id: String,
    },
    /// Read a token from standard input and print its SHA-256 (64 hex digits), for
    /// `auth.admin_tokens: [{ name, sha256 }]` in the config file.
    Hash,
}

pub fn run(g: &Global, command: Command) -> ExitCode {
    if let Command::Hash = command {
        // Needs neither the config nor a store: the token may be made up for a new site.
        return plane::finish(hash(g.json));
    }
    let (rt, plane) = match plane::open(g) {
        Ok(p) => p,
        Err(code) => return code,
    };
    plane::finish(rt.block_on(exec(&plane, g.json, command)))
}

fn hash(json: bool) -> Result<(), Failure> {
    let mut input = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut input)
        .map_err(|e| Failure::usage(format!("admin-token hash: standard input: {e}")))?;
    let token = input.trim();
    if token.is_empty() {
        return Err(Failure::usage(
            "admin-token hash: give the token on standard input (printf %s \"$TOKEN\" | berth admin-token hash)",
        ));
    }
    let hex = sha256_hex(token);
    if json {
        return output::json(&serde_json::json!({ "sha256": hex }));
    }
    output::say(&format!("{hex}\n"))
}

/// What the config's `auth.admin_tokens[].sha256` holds for `token`.
fn sha256_hex(token: &str) -> String {
    crate::oci::digest::hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

async fn exec(plane: &Plane, json: bool, command: Command) -> Result<(), Failure> {
    match command {
        Command::Create { name } => {
            let created = plane.create_admin_token(&name).await?;
            if json {
                return output::json(&created);
            }
            output::say(&format!(
                "Created admin token {} ({}).\n\n\
                 Token (shown this once; berth keeps only a hash):\n\n  {}\n\n\
                 Use it as `Authorization: Bearer <token>` on the admin API, or with\n\
                 BERTH_ADMIN_TOKEN=<token> berth --server <admin URL> license list\n",
                created.view.id, created.view.name, created.token
            ))
        }
        Command::List => {
            let all = plane.admin_tokens().await?;
            if json {
                return output::json(&all);
            }
            if all.is_empty() {
                return output::say("no admin tokens\n");
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.state.clone(),
                        t.origin.clone(),
                        or_dash(t.created.as_deref()),
                    ]
                })
                .collect();
            output::say(&table(&["ID", "NAME", "STATE", "ORIGIN", "CREATED"], &rows))
        }
        Command::Revoke { id } => {
            let t = plane.revoke_admin_token(&id).await?;
            if json {
                return output::json(&t);
            }
            output::say(&format!(
                "Revoked admin token {} ({}): refused from now on.\n",
                t.id, t.name
            ))
        }
        Command::Hash => hash(json),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_is_the_plain_sha256_the_config_holds() {
        // sha256("abc"), from FIPS 180-2.
        assert_eq!(
            super::sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
