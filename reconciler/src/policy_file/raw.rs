//! The raw policy file: serde types that mirror the YAML exactly, with `deny_unknown_fields` everywhere.
//!
//! Every leaf is a located string ([`Text`]) and every key is optional, so that units, numbers and booleans
//! are parsed during validation, where all errors are collected, rather than by serde, which stops at the first.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

/// A scalar as written in the file, with where it was written.
pub(crate) type Text = Spanned<String>;

/// A mapping with arbitrary keys, kept in file order with each key's location.
#[derive(Debug)]
pub(crate) struct Entries<V>(pub(crate) Vec<(Text, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }

        d.deserialize_map(EntriesVisitor(PhantomData))
    }
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    #[serde(rename = "apiVersion")]
    pub api_version: Option<Text>,
    pub kind: Option<Text>,
    pub server: Option<RawServer>,
    pub auth: Option<RawAuth>,
    pub profiles: Option<Entries<RawProfile>>,
    pub default_profile: Option<Text>,
    pub limits: Option<RawLimits>,
    pub sessions: Option<RawSessions>,
    pub reconcile: Option<RawReconcile>,
    pub docker: Option<RawDocker>,
    pub peers: Option<RawPeers>,
    pub recordings: Option<RawRecordings>,
    pub audit: Option<RawAudit>,
}

/// `server`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<Text>,
    pub admin_listen: Option<Text>,
    pub admin_token_sha256: Option<Text>,
    pub trusted_proxies: Option<Vec<Text>>,
    pub allowed_origins: Option<Vec<Text>>,
    pub max_message_bytes: Option<Text>,
    pub hello_timeout: Option<Text>,
    pub ping_interval: Option<Text>,
    pub pong_timeout: Option<Text>,
    pub stall_timeout: Option<Text>,
    pub replay_bytes: Option<Text>,
    pub input_buffer_bytes: Option<Text>,
    pub header_read_timeout: Option<Text>,
    pub max_connections: Option<Text>,
    pub max_pending: Option<Text>,
    pub max_pending_per_ip: Option<Text>,
}

/// `auth`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub anonymous: Option<Text>,
    pub anonymous_profiles: Option<Vec<Text>>,
    pub static_tokens: Option<Vec<RawStaticToken>>,
    pub jwt: Option<RawJwt>,
}

/// `auth.static_tokens[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStaticToken {
    pub name: Option<Text>,
    pub sha256: Option<Text>,
    pub profiles: Option<Vec<Text>>,
}

/// `auth.jwt`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwt {
    pub algorithm: Option<Text>,
    pub key: Option<Text>,
    pub key_file: Option<Text>,
    pub issuer: Option<Text>,
    pub audience: Option<Text>,
    pub profiles_claim: Option<Text>,
    pub leeway: Option<Text>,
}

/// `profiles.<name>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProfile {
    pub image: Option<Text>,
    pub command: Option<Vec<Text>>,
    pub env: Option<Entries<Text>>,
    pub client_env: Option<Vec<Text>>,
    pub credentials: Option<Vec<RawCredential>>,
    pub user: Option<Text>,
    pub working_dir: Option<Text>,
    pub resources: Option<RawResources>,
    pub security: Option<RawSecurity>,
    pub network: Option<Text>,
    pub healthcheck: Option<RawHealthCheck>,
    pub on_unhealthy: Option<Text>,
    pub logs: Option<RawLogs>,
    #[serde(rename = "unsafe")]
    pub acknowledged_unsafe: Option<Vec<Text>>,
    pub runtime: Option<Text>,
    pub recording: Option<RawRecording>,
    pub sharing: Option<RawSharing>,
    pub pool: Option<RawPool>,
}

/// `profiles.<name>.pool`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub size: Option<Text>,
    pub max_age: Option<Text>,
}

/// `profiles.<name>.recording`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecording {
    pub mode: Option<Text>,
    pub input: Option<Text>,
    pub max_size: Option<Text>,
}

/// `profiles.<name>.sharing`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSharing {
    pub enabled: Option<Text>,
    pub max_viewers: Option<Text>,
    pub max_grant_ttl: Option<Text>,
    pub anonymous: Option<Text>,
}

/// `profiles.<name>.credentials[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredential {
    pub claim: Option<Text>,
    pub hello: Option<Text>,
    pub env: Option<Text>,
}

/// `profiles.<name>.resources`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResources {
    pub memory: Option<Text>,
    pub cpus: Option<Text>,
    pub pids: Option<Text>,
    pub nofile: Option<Text>,
    pub nproc: Option<Text>,
    pub core: Option<Text>,
}

/// `profiles.<name>.security`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecurity {
    pub read_only_root: Option<Text>,
    pub cap_drop_all: Option<Text>,
    pub no_new_privileges: Option<Text>,
    pub init: Option<Text>,
    pub tmpfs: Option<Vec<RawTmpfs>>,
    pub seccomp: Option<Text>,
    pub apparmor: Option<Text>,
}

/// `profiles.<name>.security.tmpfs[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTmpfs {
    pub path: Option<Text>,
    pub options: Option<Text>,
}

/// `profiles.<name>.healthcheck`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub command: Option<Vec<Text>>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub retries: Option<Text>,
    pub start_period: Option<Text>,
}

/// `profiles.<name>.logs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogs {
    pub max_size: Option<Text>,
    pub max_files: Option<Text>,
}

/// `limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_sessions: Option<Text>,
    pub max_anonymous: Option<Text>,
    pub max_authenticated: Option<Text>,
    pub max_per_ip: Option<Text>,
    pub connections_per_minute: Option<Text>,
    pub connection_burst: Option<Text>,
    pub queue_wait: Option<Text>,
    pub queue_len: Option<Text>,
    pub tracked_ips: Option<Text>,
    pub max_queued_per_ip: Option<Text>,
    pub ipv4_prefix: Option<Text>,
    pub ipv6_prefix: Option<Text>,
    pub rate_exempt: Option<Vec<Text>>,
}

/// `sessions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSessions {
    pub idle_timeout: Option<Text>,
    pub idle_warning: Option<Text>,
    pub max_lifetime: Option<Text>,
    pub resume_grace: Option<Text>,
}

/// `reconcile`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReconcile {
    pub resync_interval: Option<Text>,
    pub concurrency: Option<Text>,
    pub docker_timeout: Option<Text>,
    pub startup: Option<Text>,
    pub stale_age: Option<Text>,
    pub shutdown: Option<Text>,
    pub shutdown_grace: Option<Text>,
    pub start_timeout: Option<Text>,
    pub stop_timeout: Option<Text>,
    pub backoff_base: Option<Text>,
    pub backoff_max: Option<Text>,
    pub max_create_attempts: Option<Text>,
}

/// `docker`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDocker {
    pub namespace: Option<Text>,
    pub name_prefix: Option<Text>,
}

/// `peers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPeers {
    pub lease_timeout: Option<Text>,
    pub on_dead: Option<Text>,
    pub image: Option<Text>,
}

/// `recordings`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecordings {
    pub dir: Option<Text>,
    pub retention: Option<RawRetention>,
}

/// `recordings.retention`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetention {
    pub max_age: Option<Text>,
    pub max_total_size: Option<Text>,
}

/// `audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub log: Option<Text>,
}
