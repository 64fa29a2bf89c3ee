//! `berth license create|list|show|extend|revoke|rotate`: the vendor's customer licenses,
//! kept in the state store (or, with `--server`, a running berth's). A secret is printed
//! once, by `create` and `rotate`, and never again; the config file's licenses are listed
//! too, and are changed by editing the file.

use std::process::ExitCode;

use super::output::{self, expiry, or_dash, record, table};
use super::plane::{self, Failure, Plane};
use super::Global;
use crate::control::{CreatedLicense, LicenseFilter, LicenseView, NewLicense};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Issue a license for a customer; prints its secret (once), the docker login line and
    /// a Kubernetes pull secret to send them.
    Create {
        /// The app the license entitles the customer to pull.
        #[arg(long)]
        app: String,
        /// The customer's name, as listings and usage reports show it.
        #[arg(long)]
        customer: String,
        /// When it stops working: a date (2027-06-30, valid through that day, UTC), an
        /// RFC 3339 time, or a duration from now (90d). Default: never.
        #[arg(long)]
        expires: Option<String>,
        /// Narrow the app's images to these globs over host/repository ('quay.io/acme/*').
        #[arg(long, num_args = 1..)]
        images: Vec<String>,
    },
    /// List licenses (the state store's and the config file's), by id.
    List {
        #[arg(long)]
        app: Option<String>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
    /// Show one license.
    Show {
        /// The license's id (`lic_…`, as `list` shows it).
        id: String,
    },
    /// Set a new expiry (a date in the past ends the license now), or --never.
    Extend {
        /// The license's id (`lic_…`, as `list` shows it).
        id: String,
        /// A date (2027-06-30), an RFC 3339 time, or a duration from now (90d).
        #[arg(long, required_unless_present = "never")]
        expires: Option<String>,
        /// Remove the expiry.
        #[arg(long, conflicts_with = "expires")]
        never: bool,
    },
    /// Revoke a license: refused from the next request on, on every replica.
    Revoke {
        /// The license's id (`lic_…`, as `list` shows it).
        id: String,
    },
    /// Give a license a new secret (printed once); the old one stops working.
    Rotate {
        /// The license's id (`lic_…`, as `list` shows it).
        id: String,
    },
}

/// What `--state` filters on.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StateArg {
    Active,
    Expired,
    Revoked,
}

impl StateArg {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            StateArg::Active => "active",
            StateArg::Expired => "expired",
            StateArg::Revoked => "revoked",
        }
    }
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
            app,
            customer,
            expires,
            images,
        } => {
            let created = plane
                .create_license(NewLicense {
                    app,
                    customer,
                    expires,
                    images,
                })
                .await?;
            if json {
                return output::json(&created);
            }
            let l = &created.license;
            let head = format!(
                "Created license {} for {} (app {}, expires {}).\n",
                l.id,
                l.customer,
                l.app,
                expiry(l.expires.as_deref())
            );
            output::say(&(head + &hand_over(&created)))
        }
        Command::List { app, state } => {
            let filter = LicenseFilter {
                app,
                state: state.map(|s| s.as_str().to_string()),
                ..LicenseFilter::default()
            };
            let all = plane.licenses(filter).await?;
            if json {
                return output::json(&all);
            }
            if all.is_empty() {
                return output::say("no licenses\n");
            }
            output::say(&list_table(&all))
        }
        Command::Show { id } => {
            let l = plane.license(&id).await?;
            if json {
                return output::json(&l);
            }
            output::say(&show(&l))
        }
        Command::Extend { id, expires, never } => {
            let expires = if never { None } else { expires };
            let l = plane.extend_license(&id, expires).await?;
            if json {
                return output::json(&l);
            }
            output::say(&format!(
                "License {} ({}) now expires {}: {}.\n",
                l.id,
                l.customer,
                expiry(l.expires.as_deref()),
                l.state
            ))
        }
        Command::Revoke { id } => {
            let l = plane.revoke_license(&id).await?;
            if json {
                return output::json(&l);
            }
            output::say(&format!(
                "Revoked license {} ({}): its pulls are refused from now on.\n",
                l.id, l.customer
            ))
        }
        Command::Rotate { id } => {
            let created = plane.rotate_license(&id).await?;
            if json {
                return output::json(&created);
            }
            let l = &created.license;
            let head = format!(
                "New secret for license {} ({}); the old one no longer works.\n",
                l.id, l.customer
            );
            output::say(&(head + &hand_over(&created)))
        }
    }
}

/// The secret, the login line and the pull secret: what the vendor sends the customer.
fn hand_over(c: &CreatedLicense) -> String {
    format!(
        "\nSecret (shown this once; berth keeps only a hash):\n\n  {}\n\n\
         The customer logs in with:\n\n  {}\n\n\
         or, on Kubernetes, applies this image pull secret:\n\n{}",
        c.secret, c.docker_login, c.pull_secret
    )
}

fn list_table(all: &[LicenseView]) -> String {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|l| {
            vec![
                l.id.clone(),
                l.customer.clone(),
                l.app.clone(),
                expiry(l.expires.as_deref()),
                l.state.clone(),
                l.origin.clone(),
                or_dash(l.last_pull.as_deref()),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "CUSTOMER",
            "APP",
            "EXPIRES",
            "STATE",
            "ORIGIN",
            "LAST PULL",
        ],
        &rows,
    )
}

fn show(l: &LicenseView) -> String {
    record(&[
        ("id", l.id.clone()),
        ("customer", l.customer.clone()),
        ("app", l.app.clone()),
        ("state", l.state.clone()),
        ("expires", expiry(l.expires.as_deref())),
        (
            "images",
            if l.images.is_empty() {
                "all of the app's".to_string()
            } else {
                l.images.join(", ")
            },
        ),
        (
            "origin",
            if l.origin == "config" {
                "config (read-only: change it in the config file)".to_string()
            } else {
                l.origin.clone()
            },
        ),
        ("created", or_dash(l.created.as_deref())),
        ("last pull", or_dash(l.last_pull.as_deref())),
    ])
}
