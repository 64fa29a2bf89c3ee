//! `berth apikey create|list|show|revoke`: API keys for CI and the vendor's own tooling
//! (`docker login -u api -p <key>`), limited to apps and actions. The key is printed once,
//! by `create`.

use std::process::ExitCode;

use super::license::StateArg;
use super::output::{self, expiry, or_dash, record, table};
use super::plane::{self, Failure, Plane};
use super::Global;
use crate::control::{KeyFilter, KeyView, NewKey};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create an API key; prints the key (once).
    Create {
        /// An app the key works in (repeat for several).
        #[arg(long = "app", required = true)]
        apps: Vec<String>,
        /// What it is for, e.g. ci-main (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// What it may do: pull, push, delete (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        actions: Vec<String>,
        /// When it stops working: a date, an RFC 3339 time or a duration (90d). Default: never.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List API keys, by id.
    List {
        /// Only keys that work in this app.
        #[arg(long)]
        app: Option<String>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
    /// Show one API key.
    Show {
        /// The API key's id (`key_…`, as `list` shows it).
        id: String,
    },
    /// Revoke an API key: refused from the next request on.
    Revoke {
        /// The API key's id (`key_…`, as `list` shows it).
        id: String,
    },
}

pub fn run(g: &Global, command: Command) -> ExitCode {
    let (rt, plane) = match plane::open(g) {
        Ok(p) => p,
        Err(code) => return code,
    };
    plane::finish(rt.block_on(exec(&plane, g.json, command)))
}

async fn exec(plane: &Plane, json: bool, command: Command) -> Result<(), Failure> {
    match command {
        Command::Create {
            apps,
            name,
            actions,
            expires,
        } => {
            let created = plane
                .create_key(NewKey {
                    name,
                    apps,
                    actions,
                    expires,
                })
                .await?;
            if json {
                return output::json(&created);
            }
            let k = &created.view;
            let host = plane.hostname().unwrap_or("<berth's hostname>");
            output::say(&format!(
                "Created API key {} ({}) for {}: {}, expires {}.\n\n\
                 Key (shown this once; berth keeps only a hash):\n\n  {}\n\n\
                 It is the password of any username; in CI, with the key in $BERTH_API_KEY:\n\n  \
                 printf %s \"$BERTH_API_KEY\" | docker login {host} -u api --password-stdin\n",
                k.id,
                k.name,
                k.apps.join(", "),
                k.actions.join(", "),
                expiry(k.expires.as_deref()),
                created.key,
            ))
        }
        Command::List { app, state } => {
            let filter = KeyFilter {
                app,
                state: state.map(|s| s.as_str().to_string()),
                ..KeyFilter::default()
            };
            let all = plane.keys(filter).await?;
            if json {
                return output::json(&all);
            }
            if all.is_empty() {
                return output::say("no API keys\n");
            }
            output::say(&list_table(&all))
        }
        Command::Show { id } => {
            let k = plane.key(&id).await?;
            if json {
                return output::json(&k);
            }
            output::say(&record(&[
                ("id", k.id.clone()),
                ("name", k.name.clone()),
                ("apps", k.apps.join(", ")),
                ("actions", k.actions.join(", ")),
                ("state", k.state.clone()),
                ("expires", expiry(k.expires.as_deref())),
                ("created", or_dash(k.created.as_deref())),
                ("last used", or_dash(k.last_used.as_deref())),
            ]))
        }
        Command::Revoke { id } => {
            let k = plane.revoke_key(&id).await?;
            if json {
                return output::json(&k);
            }
            output::say(&format!(
                "Revoked API key {} ({}): refused from now on.\n",
                k.id, k.name
            ))
        }
    }
}

fn list_table(all: &[KeyView]) -> String {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                k.name.clone(),
                k.apps.join(","),
                k.actions.join(","),
                expiry(k.expires.as_deref()),
                k.state.clone(),
                or_dash(k.last_used.as_deref()),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "APPS",
            "ACTIONS",
            "EXPIRES",
            "STATE",
            "LAST USED",
        ],
        &rows,
    )
}
