//! The validated policy: everything an operator tunes, as plain data with defaults.
//!
//! `policy::file` turns YAML into this type; everything else in berth reads only this type.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ids::ProfileName;
use crate::labels::LabelNamespace;
pub use crate::policy_unsafe::UnsafeSetting;
pub use auth::{AuthPolicy, JwtAlgorithm, JwtPolicy, SecretString, Sha256Digest, StaticToken};

mod auth;

/// The whole validated policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Listen addresses, proxies, origins and WebSocket limits.
    pub server: ServerPolicy,
    /// Who may open sessions.
    pub auth: AuthPolicy,
    /// Session profiles by name.
    pub profiles: BTreeMap<ProfileName, Profile>,
    /// The profile used when the client names none.
    pub default_profile: ProfileName,
    /// Admission limits.
    pub limits: Limits,
    /// Session timeouts.
    pub sessions: SessionTimeouts,
    /// Controller behaviour.
    pub reconcile: ReconcilePolicy,
    /// How berth names and labels its containers.
    pub docker: DockerPolicy,
    /// Several replicas on one Docker engine: liveness and takeover.
    pub peers: PeersPolicy,
    /// Where recordings go and how long they stay.
    pub recordings: RecordingsPolicy,
    /// The audit log of session starts and ends.
    pub audit: AuditPolicy,
}

/// Network edge settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerPolicy {
    /// Where the WebSocket, page, health and metrics endpoints listen.
    pub listen: SocketAddr,
    /// Where the admin API listens. `None` serves it on `listen`, and then only with `admin_token`.
    pub admin_listen: Option<SocketAddr>,
    /// SHA-256 of the admin bearer token. Without it and without `admin_listen`, the admin API is off.
    pub admin_token_sha256: Option<Sha256Digest>,
    /// TCP peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Allowed `Origin` values for the WebSocket upgrade. Empty means same-host only.
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket message accepted, in bytes.
    pub max_message_bytes: usize,
    /// How long a client has to send hello.
    pub hello_timeout: Duration,
    /// Server ping interval.
    pub ping_interval: Duration,
    /// A peer silent for this long is dead.
    pub pong_timeout: Duration,
    /// A client that has not read its output for this long is disconnected.
    pub stall_timeout: Duration,
    /// Per-session replay ring size, in bytes.
    pub replay_bytes: usize,
    /// Input buffered before the container is ready, in bytes.
    pub input_buffer_bytes: usize,
    /// How long a client has to send a whole HTTP request head; also how long an idle keep-alive connection
    /// stays open.
    pub header_read_timeout: Duration,
    /// Open TCP connections on the main listener, of every kind; past it a new connection is closed at once.
    pub max_connections: usize,
    /// Connections that have not yet sent a WebSocket hello (plain HTTP ones included).
    pub max_pending: usize,
    /// Pending connections per TCP peer address (grouped as `limits.ipv4_prefix` and `limits.ipv6_prefix` say);
    /// trusted proxies are exempt.
    pub max_pending_per_ip: usize,
}

/// What a session runs, and how it is confined.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// The image to run.
    pub image: String,
    /// The command; `None` runs the image's default.
    pub command: Option<Vec<String>>,
    /// Fixed environment, set by the operator.
    pub env: BTreeMap<String, String>,
    /// Environment variable names a client may set in hello. Nothing else gets in.
    pub client_env: Vec<String>,
    /// Credentials mapped into the container environment.
    pub credentials: Vec<CredentialMapping>,
    /// The user the shell runs as.
    pub user: String,
    /// The working directory, when set.
    pub working_dir: Option<String>,
    /// Resource limits.
    pub resources: Resources,
    /// Security options.
    pub security: Security,
    /// Docker network mode; `none` by default.
    pub network: String,
    /// An optional Docker health check.
    pub healthcheck: Option<HealthCheck>,
    /// What to do when Docker reports the container unhealthy.
    pub on_unhealthy: UnhealthyAction,
    /// Bounds on the container's own log.
    pub logs: LogLimits,
    /// The weakened confinement this profile acknowledges (`unsafe` in the file); using one that is not listed
    /// is refused.
    #[serde(rename = "unsafe")]
    pub acknowledged_unsafe: BTreeSet<UnsafeSetting>,
    /// The engine's OCI runtime for this profile's containers (`runc`, `runsc`, ...); `None` is the engine's
    /// default. Left out of the hash when unset, so profiles without it keep their hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Whether and how this profile's sessions are recorded. Not part of [`Profile::hash`]; left out of the
    /// serialized policy while off.
    #[serde(skip_serializing_if = "ProfileRecording::is_off")]
    pub recording: ProfileRecording,
    /// Whether this profile's sessions may be shared with viewers and writers. Not part of [`Profile::hash`];
    /// left out of the serialized policy while off.
    #[serde(skip_serializing_if = "ProfileSharing::is_off")]
    pub sharing: ProfileSharing,
    /// The warm pool of started containers kept ready for this profile (decision 0025). Left out of the hash:
    /// resizing a pool is no reason to drain it or to call running sessions drifted.
    #[serde(skip_serializing_if = "PoolPolicy::is_off")]
    pub pool: PoolPolicy,
}

/// A profile's warm pool: how many started containers wait for a session, and for how long at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolPolicy {
    /// Containers kept ready; 0 (the default) keeps no pool.
    pub size: usize,
    /// A pooled container older than this is replaced by a fresh one.
    pub max_age: Duration,
}

impl PoolPolicy {
    /// The default maximum age of a pooled container.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

    /// No pool.
    pub fn is_off(&self) -> bool {
        self.size == 0
    }
}

impl Default for PoolPolicy {
    fn default() -> Self {
        Self { size: 0, max_age: Self::DEFAULT_MAX_AGE }
    }
}

impl Profile {
    /// A profile running `image` with every hardening default.
    pub fn with_image(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            command: None,
            env: BTreeMap::new(),
            client_env: vec!["TERM".into(), "LANG".into(), "LC_ALL".into()],
            credentials: Vec::new(),
            user: "1000:1000".into(),
            working_dir: None,
            resources: Resources::default(),
            security: Security::default(),
            network: "none".into(),
            healthcheck: None,
            on_unhealthy: UnhealthyAction::Report,
            logs: LogLimits::default(),
            acknowledged_unsafe: BTreeSet::new(),
            runtime: None,
            recording: ProfileRecording::default(),
            sharing: ProfileSharing::default(),
            pool: PoolPolicy::default(),
        }
    }

    /// A short stable hash of everything that shapes the container; stamped on containers to show drift.
    /// Recording, sharing and the pool do not shape the container, and are left out (the pool shapes how many
    /// containers wait, not what any one of them is).
    pub fn hash(&self) -> String {
        let shape = Self {
            recording: ProfileRecording::default(),
            sharing: ProfileSharing::default(),
            pool: PoolPolicy::default(),
            ..self.clone()
        };
        let json = serde_json::to_vec(&shape).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..8])
    }

    /// Why this profile cannot keep a warm pool, if it cannot: a pooled container is started before its
    /// session's settings are known, and berth's launcher delivers them when the session claims it (decision 0025).
    pub fn not_poolable(&self) -> Option<&'static str> {
        if self.command.is_none() {
            // The launcher is the container's entrypoint, which makes Docker drop the image's own command.
            return Some(
                "a pooled container runs berth's launcher as its entrypoint, which replaces the image's default \
                 command: set command to the shell to run",
            );
        }
        None
    }
}

/// Whether a profile's sessions are recorded, and what a failed recording does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingMode {
    /// Not recorded.
    #[default]
    Off,
    /// Recorded; a failed recording is counted and logged, and the session goes on.
    BestEffort,
    /// Recorded; a session whose recording fails is ended (`recording_failed`).
    Required,
}

/// A profile's `recording` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProfileRecording {
    /// Off, best effort or required.
    pub mode: RecordingMode,
    /// Whether input is recorded too (off by default: it holds what users type, passwords included).
    pub input: bool,
    /// The size cap of one recording, in bytes.
    pub max_bytes: u64,
}

impl Default for ProfileRecording {
    fn default() -> Self {
        Self { mode: RecordingMode::Off, input: false, max_bytes: 64 << 20 }
    }
}

impl ProfileRecording {
    /// Whether this profile's sessions go unrecorded.
    pub fn is_off(&self) -> bool {
        self.mode == RecordingMode::Off
    }
}

/// A profile's `sharing` section: whether the owner of a session may hand out viewer and writer grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProfileSharing {
    /// Sharing is allowed at all (off by default).
    pub enabled: bool,
    /// Connections joined through grants at once, per session.
    pub max_viewers: u32,
    /// The longest lifetime a grant may be given.
    pub max_grant_ttl: Duration,
    /// Whether an anonymous owner may share.
    pub anonymous: bool,
}

impl Default for ProfileSharing {
    fn default() -> Self {
        Self { enabled: false, max_viewers: 8, max_grant_ttl: Duration::from_secs(3600), anonymous: false }
    }
}

impl ProfileSharing {
    /// Whether this profile's sessions cannot be shared.
    pub fn is_off(&self) -> bool {
        !self.enabled
    }
}

/// Where recordings go, and retention.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecordingsPolicy {
    /// The directory recordings are written to, listed, served from and removed from; `None` records nothing
    /// (a profile that records requires it).
    pub dir: Option<std::path::PathBuf>,
    /// Which recordings the controller removes: by age (since the last write) and by total size.
    pub retention: crate::retention::Retention,
}

/// The audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditPolicy {
    /// The JSON-lines file session starts and ends are appended to; `None` keeps no audit log.
    pub log: Option<std::path::PathBuf>,
}

/// Where a credential comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CredentialSource {
    /// A claim of the verified JWT.
    Claim(String),
    /// A named field of the hello's `credentials` object.
    Hello(String),
}

/// A credential mapped into one environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialMapping {
    /// Where the value comes from.
    pub from: CredentialSource,
    /// The environment variable it becomes.
    pub env: String,
}

/// Container resource limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resources {
    /// Memory limit in bytes; swap is set equal, so there is no swap.
    pub memory_bytes: i64,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: i64,
    /// Maximum number of processes.
    pub pids: i64,
    /// Open files per process (`RLIMIT_NOFILE`).
    pub nofile: Ulimit,
    /// Processes of the session's uid (`RLIMIT_NPROC`). The kernel counts every process of that uid on the host,
    /// so sessions that share a uid share it; `pids` is the per-session bound.
    pub nproc: Ulimit,
    /// Largest core dump, in bytes (`RLIMIT_CORE`); 0 writes none.
    pub core: Ulimit,
}

/// A resource limit's soft and hard values, as Docker's `--ulimit name=soft:hard` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ulimit {
    /// The limit in force; a process may raise it up to `hard`.
    pub soft: u64,
    /// The ceiling.
    pub hard: u64,
}

impl Ulimit {
    /// `soft` and `hard` equal.
    pub const fn fixed(n: u64) -> Self {
        Self { soft: n, hard: n }
    }
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            nano_cpus: 1_000_000_000,
            pids: 50,
            // Within the hard limits of common hosts (so rootless engines can set them too).
            nofile: Ulimit { soft: 1024, hard: 4096 },
            nproc: Ulimit::fixed(8192),
            core: Ulimit::fixed(0),
        }
    }
}

/// A tmpfs mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tmpfs {
    /// Mount point.
    pub path: String,
    /// Mount options, as Docker takes them.
    pub options: String,
}

/// Container security options.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Security {
    /// Mount the root filesystem read-only.
    pub read_only_root: bool,
    /// Drop every Linux capability.
    pub cap_drop_all: bool,
    /// Set `no-new-privileges`.
    pub no_new_privileges: bool,
    /// Run an init process as PID 1, so signals end the shell at once.
    pub init: bool,
    /// tmpfs mounts.
    pub tmpfs: Vec<Tmpfs>,
    /// A seccomp profile path or `unconfined`; `None` keeps Docker's default profile.
    pub seccomp: Option<String>,
    /// An AppArmor profile; `None` keeps Docker's default.
    pub apparmor: Option<String>,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            read_only_root: true,
            cap_drop_all: true,
            no_new_privileges: true,
            init: true,
            tmpfs: vec![
                Tmpfs { path: "/tmp".into(), options: "rw,noexec,nosuid,nodev,size=64m".into() },
                Tmpfs { path: "/run".into(), options: "rw,noexec,nosuid,nodev,size=8m".into() },
            ],
            seccomp: None,
            apparmor: None,
        }
    }
}

/// A Docker health check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    /// The command, run with `CMD`.
    pub command: Vec<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Failures in a row before unhealthy.
    pub retries: u32,
    /// Grace after start before failures count.
    pub start_period: Duration,
}

/// What happens when Docker reports a session container unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UnhealthyAction {
    /// Report it in status, metrics and the admin API; leave it running.
    Report,
    /// Replace it with a fresh container while its session is detached.
    Replace,
}

/// Bounds on the container's own log (json-file driver).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLimits {
    /// Largest log file, as Docker's `max-size` (e.g. `1m`).
    pub max_size: String,
    /// Number of rotated files kept.
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self { max_size: "1m".into(), max_files: 1 }
    }
}

/// Admission limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    /// All sessions of this instance.
    pub max_sessions: usize,
    /// Anonymous sessions.
    pub max_anonymous: usize,
    /// Authenticated sessions.
    pub max_authenticated: usize,
    /// Concurrent sessions per client IP.
    pub max_per_ip: usize,
    /// New connections per client IP per minute.
    pub connections_per_minute: u32,
    /// Burst allowance for connections per IP.
    pub connection_burst: u32,
    /// How long a client may wait in the admission queue; zero rejects at once when full.
    pub queue_wait: Duration,
    /// How many clients may wait in the queue.
    pub queue_len: usize,
    /// How many client IPs are tracked for rate limiting before the oldest are evicted.
    pub tracked_ips: usize,
    /// Clients waiting in the admission queue per client IP.
    pub max_queued_per_ip: usize,
    /// IPv4 clients within one network of this prefix length count as one client in every per-IP rule.
    pub ipv4_prefix: u8,
    /// IPv6 clients within one network of this prefix length count as one client in every per-IP rule.
    pub ipv6_prefix: u8,
    /// Client networks the per-IP connection rate does not count (loopback by default).
    pub rate_exempt: Vec<IpNet>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 100,
            max_anonymous: 50,
            max_authenticated: 50,
            max_per_ip: 10,
            connections_per_minute: 10,
            connection_burst: 10,
            queue_wait: Duration::from_secs(30),
            queue_len: 100,
            tracked_ips: 65_536,
            max_queued_per_ip: 5,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            rate_exempt: vec![
                IpNet::new_assert(std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)), 8),
                IpNet::new_assert(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 128),
            ],
        }
    }
}

/// Session timeouts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionTimeouts {
    /// A session with no input or output for this long ends.
    pub idle_timeout: Duration,
    /// A warning is sent this long before the idle cull.
    pub idle_warning: Duration,
    /// A session ends this long after it was created, whatever it does.
    pub max_lifetime: Duration,
    /// A detached session can be resumed for this long.
    pub resume_grace: Duration,
}

impl Default for SessionTimeouts {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            idle_warning: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(4 * 3600),
            resume_grace: Duration::from_secs(5 * 60),
        }
    }
}

/// What happens at startup to containers an earlier run of this instance left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StartupMode {
    /// Running ones become detached sessions for the resume grace; stopped or dead ones are removed.
    Adopt,
    /// Remove all of them.
    RemoveAll,
    /// Remove stopped ones and ones older than the stale age; adopt the rest.
    Conservative,
}

/// What happens to running session containers at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ShutdownMode {
    /// Leave them for the next start to adopt.
    Leave,
    /// Remove them.
    Remove,
}

/// Controller behaviour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconcilePolicy {
    /// Full list and re-plan at least this often.
    pub resync_interval: Duration,
    /// Docker actions in flight at once.
    pub concurrency: usize,
    /// Timeout on every Docker call.
    pub docker_timeout: Duration,
    /// Startup handling of earlier containers.
    pub startup: StartupMode,
    /// Age past which `conservative` removes running containers.
    pub stale_age: Duration,
    /// Shutdown handling of running containers.
    pub shutdown: ShutdownMode,
    /// Time in-flight actions get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// A container still `created` this long after creation is given up on.
    pub start_timeout: Duration,
    /// Grace a running container gets (SIGTERM, then SIGKILL) before removal. Zero removes at once, forced.
    pub stop_timeout: Duration,
    /// First retry delay after a failed action.
    pub backoff_base: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Failed create attempts before the session ends with `create_failed`.
    pub max_create_attempts: u32,
}

impl Default for ReconcilePolicy {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(10),
            concurrency: 3,
            docker_timeout: Duration::from_secs(30),
            startup: StartupMode::Adopt,
            stale_age: Duration::from_secs(2 * 3600),
            shutdown: ShutdownMode::Leave,
            shutdown_grace: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::ZERO,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            max_create_attempts: 5,
        }
    }
}

/// How berth names and labels its containers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DockerPolicy {
    /// Label key prefix; two tools with different namespaces never see each other's containers.
    pub namespace: LabelNamespace,
    /// Container name prefix: containers are named `<prefix>-<session id>`.
    pub name_prefix: String,
}

impl Default for DockerPolicy {
    fn default() -> Self {
        Self { namespace: LabelNamespace::default(), name_prefix: "berth".into() }
    }
}

/// What a replica does with the containers of a peer found dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeadPeer {
    /// Take its running sessions over, detached and resumable for the resume grace; remove the rest.
    Adopt,
    /// Remove all of its containers.
    Remove,
}

/// Replicas sharing one Docker engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeersPolicy {
    /// A peer whose sentinel has not been running for this long is dead, and its containers are taken over.
    pub lease_timeout: Duration,
    /// What the replica that takes a dead peer over does with its containers.
    pub on_dead: OnDeadPeer,
    /// Image of the sentinel and claim containers (it must have `cat` and `true`); unset: the default profile's.
    pub image: Option<String>,
}

impl Default for PeersPolicy {
    fn default() -> Self {
        Self { lease_timeout: Duration::from_secs(30), on_dead: OnDeadPeer::Adopt, image: None }
    }
}

impl Policy {
    /// The image sentinels and claims run: `peers.image`, else the default profile's.
    pub fn peer_image(&self) -> &str {
        self.peers
            .image
            .as_deref()
            .or_else(|| self.profiles.get(&self.default_profile).map(|p| p.image.as_str()))
            .unwrap_or(DEFAULT_IMAGE)
    }
}

/// The image berth's own scripts build.
pub const DEFAULT_IMAGE: &str = "berth-session:latest";

impl Default for ServerPolicy {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            admin_token_sha256: None,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            max_message_bytes: 64 << 10,
            hello_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
            replay_bytes: 256 << 10,
            input_buffer_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_pending: 256,
            max_pending_per_ip: 32,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        let name = ProfileName::default_name();
        Self {
            server: ServerPolicy::default(),
            auth: AuthPolicy { anonymous: true, anonymous_profiles: Vec::new(), static_tokens: Vec::new(), jwt: None },
            profiles: BTreeMap::from([(name.clone(), Profile::with_image(DEFAULT_IMAGE))]),
            default_profile: name,
            limits: Limits::default(),
            sessions: SessionTimeouts::default(),
            reconcile: ReconcilePolicy::default(),
            docker: DockerPolicy::default(),
            peers: PeersPolicy::default(),
            recordings: RecordingsPolicy::default(),
            audit: AuditPolicy::default(),
        }
    }
}

impl Policy {
    /// A hash of the whole policy, for logs and `/readyz`.
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..8])
    }
}
