//! The remote part of `cln-replica.toml`: `[[destination]]` tables and the
//! synchronous tier's settings. Parsed by [`crate::config::Config`].

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A secret string: serialised as is (it lives in the config file), never
/// shown by Debug, so a logged configuration cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// One `[[destination]]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// `s3://bucket/prefix`, `sftp://user@host:port/path` or `file:///path`.
    /// Options may also be given as `?key=value` after the URL.
    pub url: String,
    /// A short name for logs and status (default: the URL without options).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// S3: the endpoint of an S3-compatible service (default: AWS, or
    /// `$AWS_ENDPOINT_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3: the region (default `$AWS_REGION`, else `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3: credentials; by default `$AWS_ACCESS_KEY_ID` / `$AWS_SECRET_ACCESS_KEY`
    /// or `~/.aws/credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
    /// SFTP: the private key to log in with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<PathBuf>,
    /// SFTP: `strict` (default), `add` or `accept` for unknown host keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
    /// Background uploads to this destination stay under this rate.
    #[serde(default = "default_rate")]
    pub upload_bytes_per_s_max: u64,
}

fn default_rate() -> u64 {
    4 << 20
}

impl DestinationConfig {
    pub fn new(url: &str) -> DestinationConfig {
        DestinationConfig {
            url: url.to_string(),
            name: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            ssh_key: None,
            known_hosts: None,
            upload_bytes_per_s_max: default_rate(),
        }
    }

    /// The name in logs and status: never carries a query string (which may
    /// hold options) nor a password.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self.redacted_url(),
        }
    }

    /// The URL without its query string (which may hold options) and
    /// without a password.
    pub fn redacted_url(&self) -> String {
        let base = self.url.split('?').next().unwrap_or("");
        match base.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((userinfo, host)) => format!("{scheme}://{}@{host}", userinfo.split(':').next().unwrap_or("")),
                None => base.to_string(),
            },
            None => base.to_string(),
        }
    }

    /// A setting given either in the table or as `?key=value` in the URL.
    pub fn option(&self, key: &str) -> Option<String> {
        let from_table = match key {
            "endpoint" => self.endpoint.clone(),
            "region" => self.region.clone(),
            "access_key_id" => self.access_key_id.clone(),
            "secret_access_key" => self.secret_access_key.as_ref().map(|s| s.0.clone()),
            "ssh_key" | "key" => self.ssh_key.as_ref().map(|p| p.display().to_string()),
            "known_hosts" => self.known_hosts.clone(),
            _ => None,
        };
        from_table.or_else(|| {
            let q = self.url.split_once('?')?.1;
            q.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
        })
    }
}

/// Which changes wait for the destinations before lightningd may commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteSync {
    /// Every change is shipped in the background.
    #[default]
    None,
    /// Changes touching the tables funds depend on wait for a quorum.
    ChannelState,
    /// Every change waits for a quorum.
    All,
}

/// What a synchronous change does when no quorum acknowledges it in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnTimeout {
    /// Refuse the hook: lightningd stops without committing.
    #[default]
    Halt,
    /// Answer `continue`, log loudly, flag the status, and ship in the
    /// background until a quorum has caught up again.
    Degrade,
}

/// The tables whose changes the `channel-state` tier waits for: the channel
/// state funds depend on (docs/LIGHTNINGD.md, "The schema").
pub const CHANNEL_STATE_TABLES: &[&str] = &[
    "channels",
    "channel_htlcs",
    "shachains",
    "shachain_known",
    "htlc_sigs",
    "penalty_bases",
    "channel_funding_inflights",
    "outputs",
];

/// Whether a change must wait for the destinations under `mode`.
pub fn needs_sync<S: AsRef<str>>(mode: RemoteSync, statements: &[S]) -> bool {
    match mode {
        RemoteSync::None => false,
        RemoteSync::All => true,
        // A statement the classifier is not sure about waits too: the cost
        // of waiting needlessly is latency, of not waiting an unshipped
        // channel state.
        RemoteSync::ChannelState => statements.iter().any(|s| match crate::sql::classify(s.as_ref()) {
            crate::sql::Write::Unknown => true,
            w => w.table().is_some_and(|t| CHANNEL_STATE_TABLES.iter().any(|c| t.eq_ignore_ascii_case(c))),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_state_changes_wait() {
        let cs = RemoteSync::ChannelState;
        assert!(needs_sync(cs, &["INSERT INTO invoices VALUES (1)", "UPDATE channels SET a=1"]));
        assert!(needs_sync(cs, &["INSERT OR REPLACE INTO shachain_known(a) VALUES (1)"]));
        assert!(needs_sync(cs, &["update OR IGNORE outputs set x=1"]));
        assert!(needs_sync(cs, &["DELETE FROM htlc_sigs WHERE 1"]));
        assert!(needs_sync(cs, &["CREATE TABLE IF NOT EXISTS penalty_bases (x)"]));
        assert!(needs_sync(cs, &["ALTER TABLE \"channels\" ADD x"]));
        assert!(needs_sync(cs, &["UPDATE main.channels SET state = 2"]), "schema-qualified");
        assert!(needs_sync(cs, &["WITH x AS (SELECT 1) UPDATE channels SET a = 1"]), "unsure waits");
        assert!(!needs_sync(cs, &["INSERT INTO invoices VALUES (1)"]));
        assert!(!needs_sync(cs, &["UPDATE channels_x SET a=1"]));
        assert!(!needs_sync(cs, &["PRAGMA foreign_keys = ON;"]));
        assert!(needs_sync(RemoteSync::All, &["PRAGMA foreign_keys = ON;"]));
        assert!(!needs_sync(RemoteSync::None, &["UPDATE channels SET a=1"]));
    }

    #[test]
    fn names_never_show_secrets() {
        let mut d = DestinationConfig::new("sftp://bob:pw@host:22/p?key=/k");
        assert_eq!(d.display_name(), "sftp://bob@host:22/p");
        d.name = Some("nas".into());
        assert_eq!((d.display_name().as_str(), d.redacted_url().as_str()), ("nas", "sftp://bob@host:22/p"));
        d.secret_access_key = Some(Secret("hunter2".into()));
        assert!(!format!("{d:?}").contains("hunter2"));
        assert_eq!(d.option("key").as_deref(), Some("/k"));
    }
}
