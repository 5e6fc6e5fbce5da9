//! `certvault cert renew`, `certvault channel …`, `certvault delivery …` and
//! `certvault admin test-clock`: renewal, notification channels and deliveries.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::{Client, Conn, print_json_or, print_table};

/// Renews a certificate now through the vault's API.
pub(crate) async fn renew(conn: &Conn, name: &str, rekey: bool) -> Result<()> {
    let c = Client::new(conn)?;
    let url = c.url(&format!("/certificates/{name}/renew"));
    let (_, v) = c
        .send(reqwest::Method::POST, &url, Some(&json!({"rekey": rekey})))
        .await?;
    print_json_or(&v, conn.json, |v| {
        let status = v["status"].as_str().unwrap_or("?");
        println!(
            "{name}: new version {} ({status})",
            v["version"].as_str().unwrap_or("?")
        );
        if let Some(csr) = v["csr"].as_str() {
            println!("CSR to have signed and merge (base64 DER):\n{csr}");
        }
    })
}

/// Notification channels of a vault (admin).
#[derive(clap::Subcommand, Debug)]
pub(crate) enum ChannelCommand {
    /// List the channels of a vault.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        #[arg(long, default_value = "default")]
        vault: String,
    },
    /// Create a channel; a generated signing secret is shown once.
    Create {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        #[arg(long, default_value = "default")]
        vault: String,
        /// Channel name.
        name: String,
        /// webhook or slack.
        #[arg(long = "type", default_value = "webhook")]
        kind: String,
        /// Receiver URL (https://, or http:// to a loopback address).
        #[arg(long)]
        url: String,
        /// Signing secret (16+ characters; prefer the variable CERTVAULT_CHANNEL_SECRET);
        /// generated when absent.
        #[arg(long, env = "CERTVAULT_CHANNEL_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Change a channel.
    Update {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        #[arg(long, default_value = "default")]
        vault: String,
        /// Channel name.
        name: String,
        /// New receiver URL.
        #[arg(long)]
        url: Option<String>,
        /// New signing secret (prefer CERTVAULT_CHANNEL_SECRET).
        #[arg(long, env = "CERTVAULT_CHANNEL_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Enable or disable it.
        #[arg(long)]
        enabled: Option<bool>,
    },
    /// Delete a channel with its delivery history.
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        #[arg(long, default_value = "default")]
        vault: String,
        /// Channel name.
        name: String,
    },
    /// Send a test event now and show the receiver's answer.
    Test {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        #[arg(long, default_value = "default")]
        vault: String,
        /// Channel name.
        name: String,
    },
}

fn channel_row(v: &Value) -> Vec<String> {
    vec![
        v["name"].as_str().unwrap_or("").to_owned(),
        v["type"].as_str().unwrap_or("").to_owned(),
        v["target"].as_str().unwrap_or("").to_owned(),
        v["enabled"].to_string(),
    ]
}

const CHANNEL_HEAD: [&str; 4] = ["NAME", "TYPE", "TARGET", "ENABLED"];

pub(crate) async fn run_channel(cmd: ChannelCommand) -> Result<()> {
    use reqwest::Method as M;
    match cmd {
        ChannelCommand::List { conn, vault } => {
            let c = Client::new(&conn)?;
            let v = c
                .admin(M::GET, &format!("vaults/{vault}/channels"), None)
                .await?;
            print_json_or(&v, conn.json, |v| {
                let rows: Vec<Vec<String>> = v["value"]
                    .as_array()
                    .map(|a| a.iter().map(channel_row).collect())
                    .unwrap_or_default();
                print_table(&rows, &CHANNEL_HEAD);
            })
        }
        ChannelCommand::Create {
            conn,
            vault,
            name,
            kind,
            url,
            secret,
            disabled,
        } => {
            let c = Client::new(&conn)?;
            let mut body = json!({"name": name, "type": kind, "url": url, "enabled": !disabled});
            if let Some(s) = secret {
                body["secret"] = json!(s);
            }
            let v = c
                .admin(M::POST, &format!("vaults/{vault}/channels"), Some(&body))
                .await?;
            print_json_or(&v, conn.json, |v| {
                print_table(&[channel_row(v)], &CHANNEL_HEAD);
                if let Some(s) = v["secret"].as_str() {
                    println!("signing secret (shown once; keep it with the receiver):\n  {s}");
                }
            })
        }
        ChannelCommand::Update {
            conn,
            vault,
            name,
            url,
            secret,
            enabled,
        } => {
            let c = Client::new(&conn)?;
            let mut body = json!({});
            if let Some(u) = url {
                body["url"] = json!(u);
            }
            if let Some(s) = secret {
                body["secret"] = json!(s);
            }
            if let Some(e) = enabled {
                body["enabled"] = json!(e);
            }
            let v = c
                .admin(
                    M::PATCH,
                    &format!("vaults/{vault}/channels/{name}"),
                    Some(&body),
                )
                .await?;
            print_json_or(&v, conn.json, |v| {
                print_table(&[channel_row(v)], &CHANNEL_HEAD)
            })
        }
        ChannelCommand::Delete { conn, vault, name } => {
            let c = Client::new(&conn)?;
            c.admin(M::DELETE, &format!("vaults/{vault}/channels/{name}"), None)
                .await?;
            if conn.json {
                println!("{{}}");
            } else {
                println!("deleted channel {name} of vault {vault}");
            }
            Ok(())
        }
        ChannelCommand::Test { conn, vault, name } => {
            let c = Client::new(&conn)?;
            let v = c
                .admin(
                    M::POST,
                    &format!("vaults/{vault}/channels/{name}/test"),
                    None,
                )
                .await?;
            print_json_or(&v, conn.json, |v| {
                let delivered = v["delivered"].as_bool().unwrap_or(false);
                println!(
                    "{}: status {}, {} ms{}",
                    if delivered {
                        "delivered"
                    } else {
                        "NOT delivered"
                    },
                    v["status"],
                    v["millis"],
                    v["error"]
                        .as_str()
                        .map(|e| format!(", error: {e}"))
                        .unwrap_or_default()
                );
                if let Some(b) = v["body"].as_str()
                    && !b.is_empty()
                {
                    println!("receiver answered: {b}");
                }
            })?;
            if v["delivered"].as_bool() != Some(true) {
                bail!("the test event was not delivered");
            }
            Ok(())
        }
    }
}

/// Deliveries of events (admin): history, dead letters, replay.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum DeliveryCommand {
    /// List deliveries (--status dead: the dead letters).
    List {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        #[arg(long, default_value = "default")]
        vault: String,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// pending, delivered, dead or skipped.
        #[arg(long)]
        status: Option<String>,
        /// Start after this delivery id.
        #[arg(long)]
        after: Option<i64>,
    },
    /// Send a dead delivery again.
    Replay {
        #[command(flatten)]
        conn: Conn,
        /// Vault name.
        #[arg(long, default_value = "default")]
        vault: String,
        /// Delivery id.
        id: i64,
    },
}

fn delivery_row(v: &Value) -> Vec<String> {
    let s = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    vec![
        s("id"),
        s("event_type"),
        s("certificate"),
        s("channel"),
        s("status"),
        s("attempts"),
        s("last_error"),
    ]
}

const DELIVERY_HEAD: [&str; 7] = [
    "ID",
    "EVENT",
    "CERTIFICATE",
    "CHANNEL",
    "STATUS",
    "ATTEMPTS",
    "LAST ERROR",
];

pub(crate) async fn run_delivery(cmd: DeliveryCommand) -> Result<()> {
    use reqwest::Method as M;
    match cmd {
        DeliveryCommand::List {
            conn,
            vault,
            channel,
            status,
            after,
        } => {
            let c = Client::new(&conn)?;
            let mut q = Vec::new();
            if let Some(s) = status {
                q.push(format!("status={s}"));
            }
            if let Some(a) = after {
                q.push(format!("after={a}"));
            }
            let base = match channel {
                Some(ch) => format!("vaults/{vault}/channels/{ch}/deliveries"),
                None => format!("vaults/{vault}/deliveries"),
            };
            let path = if q.is_empty() {
                base
            } else {
                format!("{base}?{}", q.join("&"))
            };
            let v = c.admin(M::GET, &path, None).await?;
            print_json_or(&v, conn.json, |v| {
                let rows: Vec<Vec<String>> = v["value"]
                    .as_array()
                    .map(|a| a.iter().map(delivery_row).collect())
                    .unwrap_or_default();
                print_table(&rows, &DELIVERY_HEAD);
                if let Some(n) = v["next"].as_i64() {
                    println!("more: --after {n}");
                }
            })
        }
        DeliveryCommand::Replay { conn, vault, id } => {
            let c = Client::new(&conn)?;
            let v = c
                .admin(
                    M::POST,
                    &format!("vaults/{vault}/deliveries/{id}/replay"),
                    None,
                )
                .await?;
            print_json_or(&v, conn.json, |v| {
                print_table(&[delivery_row(v)], &DELIVERY_HEAD)
            })
        }
    }
}

/// Reads or moves the server's test clock (admin).
pub(crate) async fn test_clock(conn: &Conn, advance: Option<i64>) -> Result<()> {
    use reqwest::Method as M;
    let c = Client::new(conn)?;
    let v = match advance {
        Some(s) => {
            c.admin(M::POST, "test-clock/advance", Some(&json!({"seconds": s})))
                .await?
        }
        None => c.admin(M::GET, "test-clock", None).await?,
    };
    print_json_or(&v, conn.json, |v| {
        println!("server time {} (test clock: {})", v["now"], v["test_clock"])
    })
}
