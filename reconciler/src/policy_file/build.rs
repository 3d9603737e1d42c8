//! Turns the raw file into a validated [`Policy`], section by section, collecting every error with its
//! location. A refused value is replaced by its default so that checking can go on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::auth::{auth, sha256_hex};
use super::ctx::{Ctx, MIN_POSITIVE, human_duration, loc, to_u32, to_usize};
use super::profile::profile;
use super::raw::{
    RawAudit, RawAuth, RawDocker, RawLimits, RawPeers, RawPolicy, RawReconcile, RawRecordings, RawServer, RawSessions,
    Text,
};
use crate::ids::ProfileName;
use crate::labels::LabelNamespace;
use crate::policy::{
    AuditPolicy, DEFAULT_IMAGE, DockerPolicy, Limits, OnDeadPeer, PeersPolicy, Policy, Profile, ReconcilePolicy,
    RecordingsPolicy, ServerPolicy, SessionTimeouts, ShutdownMode, StartupMode,
};

/// The `apiVersion` this berth reads.
pub(crate) const API_VERSION: &str = "berth.dev/v1";
/// The `kind` of a policy file.
pub(crate) const KIND: &str = "Policy";

/// Validates the whole file.
pub(crate) fn policy(cx: &mut Ctx<'_>, raw: &RawPolicy) -> Policy {
    header(cx, raw);
    let d = Policy::default();
    let server = server(cx, raw.server.as_ref().unwrap_or(&RawServer::default()));
    let jwt_configured = raw.auth.as_ref().is_some_and(|a| a.jwt.is_some());
    let (profiles, names_valid) = profiles(cx, raw, jwt_configured);
    let default_profile = match &raw.default_profile {
        None => d.default_profile,
        Some(t) => cx.profile_name(t, "default_profile").unwrap_or(d.default_profile),
    };
    if names_valid && !profiles.contains_key(&default_profile) {
        let known = profiles.keys().map(ProfileName::as_str).collect::<Vec<_>>().join(", ");
        let (at, reason) = match &raw.default_profile {
            Some(t) => (Some(&t.referenced), format!("no profile is named {:?}; the profiles are: {known}", t.value)),
            // Unset: point at the first profile, since that is where the fix usually goes.
            None => (
                raw.profiles.as_ref().and_then(|e| e.0.first()).map(|(name, _)| &name.referenced),
                format!("is unset, which means \"default\", but no profile has that name; set it to one of: {known}"),
            ),
        };
        cx.error(at, "default_profile", reason);
    }
    let auth = auth(cx, raw.auth.as_ref().unwrap_or(&RawAuth::default()), &profiles);
    let recordings = recordings(cx, raw.recordings.as_ref().unwrap_or(&RawRecordings::default()));
    if recordings.dir.is_none() {
        // A profile that records needs somewhere to put its recordings.
        for (name, p) in raw.profiles.iter().flat_map(|e| &e.0) {
            if let Some(mode) = p.recording.as_ref().and_then(|r| r.mode.as_ref())
                && profiles.iter().any(|(k, v)| k.as_str() == name.value && !v.recording.is_off())
            {
                cx.bad(
                    mode,
                    &format!("profiles.{}.recording.mode", name.value),
                    format!("is {} but recordings.dir is unset: set the directory recordings go to", mode.value.trim()),
                );
            }
        }
    }
    Policy {
        server,
        auth,
        profiles,
        default_profile,
        limits: limits(cx, raw.limits.as_ref().unwrap_or(&RawLimits::default())),
        sessions: sessions(cx, raw.sessions.as_ref().unwrap_or(&RawSessions::default())),
        reconcile: reconcile(cx, raw.reconcile.as_ref().unwrap_or(&RawReconcile::default())),
        docker: docker(cx, raw.docker.as_ref().unwrap_or(&RawDocker::default())),
        peers: peers(cx, raw.peers.as_ref().unwrap_or(&RawPeers::default())),
        recordings,
        audit: audit(cx, raw.audit.as_ref().unwrap_or(&RawAudit::default())),
    }
}

/// A directory or file path: not empty, no NUL; relative to the policy file's directory.
fn path_value(cx: &mut Ctx<'_>, v: &Option<Text>, key: &str) -> Option<std::path::PathBuf> {
    let raw = cx.optional(v, key, |s| {
        if s.trim().is_empty() || s.contains('\0') {
            Err(format!("{s:?} is not a path"))
        } else {
            Ok(std::path::PathBuf::from(s.trim()))
        }
    })?;
    Some(cx.resolve(&raw))
}

fn recordings(cx: &mut Ctx<'_>, raw: &RawRecordings) -> RecordingsPolicy {
    let dir = path_value(cx, &raw.dir, "recordings.dir");
    let (mut max_age, mut max_total_bytes) = (None, None);
    if let Some(r) = &raw.retention {
        if r.max_age.is_some() {
            max_age =
                Some(cx.duration(&r.max_age, "recordings.retention.max_age", Duration::ZERO, Duration::from_secs(60)));
        }
        if r.max_total_size.is_some() {
            max_total_bytes =
                Some(cx.size(&r.max_total_size, "recordings.retention.max_total_size", 0, 1 << 20, 1 << 50));
        }
    }
    RecordingsPolicy { dir, retention: crate::retention::Retention { max_age, max_total_bytes } }
}

fn audit(cx: &mut Ctx<'_>, raw: &RawAudit) -> AuditPolicy {
    AuditPolicy { log: path_value(cx, &raw.log, "audit.log") }
}

fn header(cx: &mut Ctx<'_>, raw: &RawPolicy) {
    match &raw.api_version {
        None => {
            cx.missing_at_start("apiVersion", format!("missing: a policy file starts with apiVersion: {API_VERSION}"))
        }
        Some(t) if t.value != API_VERSION => {
            cx.bad(t, "apiVersion", format!("{:?} is not supported: this berth reads {API_VERSION}", t.value));
        }
        Some(_) => {}
    }
    match &raw.kind {
        None => cx.missing_at_start("kind", format!("missing: a policy file has kind: {KIND}")),
        Some(t) if t.value != KIND => cx.bad(t, "kind", format!("{:?} is not supported: use {KIND}", t.value)),
        Some(_) => {}
    }
}

/// The profiles, and whether every profile name was valid.
fn profiles(cx: &mut Ctx<'_>, raw: &RawPolicy, jwt_configured: bool) -> (BTreeMap<ProfileName, Profile>, bool) {
    let mut out = BTreeMap::new();
    let mut names_valid = true;
    for (name, p) in raw.profiles.iter().flat_map(|e| &e.0) {
        let path = format!("profiles.{}", name.value);
        let Some(pname) = cx.profile_name(name, &path) else {
            names_valid = false;
            continue;
        };
        let built = profile(cx, &path, name, p, jwt_configured);
        out.insert(pname, built);
    }
    if raw.profiles.as_ref().is_none_or(|e| e.0.is_empty()) {
        out.insert(ProfileName::default_name(), Profile::with_image(DEFAULT_IMAGE));
    }
    (out, names_valid)
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not an address: use an IP address and a port, such as 127.0.0.1:8080 or [::]:8080")
    })
}

fn cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = s
        .parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a network: use a CIDR such as 10.0.0.0/8 or an address such as 10.0.0.1"))?;
    if net.prefix_len() == 0 {
        return Err(format!(
            "{s} would trust every peer, letting any client choose the IP address that rate limits count"
        ));
    }
    Ok(net.trunc())
}

/// A network for `limits.rate_exempt`: as [`cidr`], except that `/0` is allowed (it turns the rate limit off).
fn network(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not a network: use a CIDR such as 127.0.0.0/8 or an address such as ::1"))
}

fn origin(s: &str) -> Result<String, String> {
    let lower = s.trim().to_ascii_lowercase();
    let host = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
    match host {
        Some(h)
            if !h.is_empty()
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                && !h.starts_with(':') =>
        {
            Ok(lower)
        }
        _ => Err(format!(
            "{s:?} is not an origin: use a scheme and a host, with a port if not the default, \
             such as https://example.com or http://localhost:3000 (no path, no trailing slash)"
        )),
    }
}

fn server(cx: &mut Ctx<'_>, raw: &RawServer) -> ServerPolicy {
    let d = ServerPolicy::default();
    let listen = cx.value(&raw.listen, "server.listen", d.listen, socket_addr);
    let admin_listen = cx.optional(&raw.admin_listen, "server.admin_listen", socket_addr);
    let admin_token_sha256 = cx.optional(&raw.admin_token_sha256, "server.admin_token_sha256", sha256_hex);
    if let Some(admin) = admin_listen {
        if admin == listen {
            cx.error(
                loc(&raw.admin_listen),
                "server.admin_listen",
                format!("{admin} is also server.listen; leave admin_listen unset to serve the admin API there"),
            );
        } else if !admin.ip().is_loopback() && raw.admin_token_sha256.is_none() {
            cx.error(
                loc(&raw.admin_listen),
                "server.admin_listen",
                format!("{admin} is not a loopback address, so server.admin_token_sha256 is required"),
            );
        }
    }
    let trusted_proxies =
        raw.trusted_proxies.iter().flatten().filter_map(|t| cx.item(t, "server.trusted_proxies", cidr)).collect();
    let allowed_origins =
        raw.allowed_origins.iter().flatten().filter_map(|t| cx.item(t, "server.allowed_origins", origin)).collect();
    let max_message_bytes =
        cx.size(&raw.max_message_bytes, "server.max_message_bytes", d.max_message_bytes as u64, 1 << 10, 16 << 20);
    let ping_interval = cx.duration(&raw.ping_interval, "server.ping_interval", d.ping_interval, MIN_POSITIVE);
    let pong_timeout = cx.duration(&raw.pong_timeout, "server.pong_timeout", d.pong_timeout, MIN_POSITIVE);
    if pong_timeout <= ping_interval {
        cx.error(
            loc(&raw.pong_timeout).or(loc(&raw.ping_interval)),
            "server.pong_timeout",
            format!(
                "{} must be longer than server.ping_interval ({}), or live peers would be dropped",
                human_duration(pong_timeout),
                human_duration(ping_interval)
            ),
        );
    }
    let max_connections =
        to_usize(cx.count(&raw.max_connections, "server.max_connections", d.max_connections as u64, 1, 1_000_000));
    let max_pending = to_usize(cx.count(&raw.max_pending, "server.max_pending", d.max_pending as u64, 1, 1_000_000));
    let max_pending_per_ip = to_usize(cx.count(
        &raw.max_pending_per_ip,
        "server.max_pending_per_ip",
        d.max_pending_per_ip as u64,
        1,
        1_000_000,
    ));
    if max_pending > max_connections {
        cx.error(
            loc(&raw.max_pending).or(loc(&raw.max_connections)),
            "server.max_pending",
            format!("{max_pending} is more than server.max_connections ({max_connections}), so it would never apply"),
        );
    }
    if max_pending_per_ip > max_pending {
        cx.error(
            loc(&raw.max_pending_per_ip).or(loc(&raw.max_pending)),
            "server.max_pending_per_ip",
            format!("{max_pending_per_ip} is more than server.max_pending ({max_pending}), so it would never apply"),
        );
    }
    ServerPolicy {
        listen,
        admin_listen,
        admin_token_sha256,
        trusted_proxies,
        allowed_origins,
        max_message_bytes: to_usize(max_message_bytes),
        hello_timeout: cx.duration(&raw.hello_timeout, "server.hello_timeout", d.hello_timeout, MIN_POSITIVE),
        ping_interval,
        pong_timeout,
        stall_timeout: cx.duration(&raw.stall_timeout, "server.stall_timeout", d.stall_timeout, MIN_POSITIVE),
        replay_bytes: to_usize(cx.size(
            &raw.replay_bytes,
            "server.replay_bytes",
            d.replay_bytes as u64,
            4 << 10,
            64 << 20,
        )),
        input_buffer_bytes: to_usize(cx.size(
            &raw.input_buffer_bytes,
            "server.input_buffer_bytes",
            d.input_buffer_bytes as u64,
            1 << 10,
            16 << 20,
        )),
        header_read_timeout: cx.duration(
            &raw.header_read_timeout,
            "server.header_read_timeout",
            d.header_read_timeout,
            MIN_POSITIVE,
        ),
        max_connections,
        max_pending,
        max_pending_per_ip,
    }
}

fn limits(cx: &mut Ctx<'_>, raw: &RawLimits) -> Limits {
    let d = Limits::default();
    let mut count = |v: &Option<Text>, key: &str, default: u64, min: u64, max: u64| {
        cx.count(v, &format!("limits.{key}"), default, min, max)
    };
    let max_sessions = count(&raw.max_sessions, "max_sessions", d.max_sessions as u64, 1, 100_000);
    let max_anonymous = count(&raw.max_anonymous, "max_anonymous", d.max_anonymous as u64, 1, 100_000);
    let max_authenticated = count(&raw.max_authenticated, "max_authenticated", d.max_authenticated as u64, 1, 100_000);
    let max_per_ip = count(&raw.max_per_ip, "max_per_ip", d.max_per_ip as u64, 1, 100_000);
    let connections_per_minute =
        count(&raw.connections_per_minute, "connections_per_minute", d.connections_per_minute.into(), 1, 1_000_000);
    let connection_burst = count(&raw.connection_burst, "connection_burst", d.connection_burst.into(), 1, 1_000_000);
    let queue_len = count(&raw.queue_len, "queue_len", d.queue_len as u64, 0, 100_000);
    let tracked_ips = count(&raw.tracked_ips, "tracked_ips", d.tracked_ips as u64, 1, 10_000_000);
    let max_queued_per_ip = count(&raw.max_queued_per_ip, "max_queued_per_ip", d.max_queued_per_ip as u64, 1, 100_000);
    let ipv4_prefix = count(&raw.ipv4_prefix, "ipv4_prefix", d.ipv4_prefix.into(), 8, 32);
    let ipv6_prefix = count(&raw.ipv6_prefix, "ipv6_prefix", d.ipv6_prefix.into(), 16, 128);
    let rate_exempt = match &raw.rate_exempt {
        None => d.rate_exempt,
        Some(list) => list.iter().filter_map(|t| cx.item(t, "limits.rate_exempt", network)).collect(),
    };
    Limits {
        max_sessions: to_usize(max_sessions),
        max_anonymous: to_usize(max_anonymous),
        max_authenticated: to_usize(max_authenticated),
        max_per_ip: to_usize(max_per_ip),
        connections_per_minute: to_u32(connections_per_minute),
        connection_burst: to_u32(connection_burst),
        queue_wait: cx.duration(&raw.queue_wait, "limits.queue_wait", d.queue_wait, Duration::ZERO),
        queue_len: to_usize(queue_len),
        tracked_ips: to_usize(tracked_ips),
        max_queued_per_ip: to_usize(max_queued_per_ip),
        ipv4_prefix: u8::try_from(ipv4_prefix).unwrap_or(d.ipv4_prefix),
        ipv6_prefix: u8::try_from(ipv6_prefix).unwrap_or(d.ipv6_prefix),
        rate_exempt,
    }
}

fn sessions(cx: &mut Ctx<'_>, raw: &RawSessions) -> SessionTimeouts {
    let d = SessionTimeouts::default();
    let idle_timeout = cx.duration(&raw.idle_timeout, "sessions.idle_timeout", d.idle_timeout, MIN_POSITIVE);
    let idle_warning = cx.duration(&raw.idle_warning, "sessions.idle_warning", d.idle_warning, Duration::ZERO);
    if idle_warning >= idle_timeout {
        cx.error(
            loc(&raw.idle_warning).or(loc(&raw.idle_timeout)),
            "sessions.idle_warning",
            format!(
                "{} must be shorter than sessions.idle_timeout ({}); use 0 for no warning",
                human_duration(idle_warning),
                human_duration(idle_timeout)
            ),
        );
    }
    SessionTimeouts {
        idle_timeout,
        idle_warning,
        max_lifetime: cx.duration(&raw.max_lifetime, "sessions.max_lifetime", d.max_lifetime, MIN_POSITIVE),
        resume_grace: cx.duration(&raw.resume_grace, "sessions.resume_grace", d.resume_grace, Duration::ZERO),
    }
}

fn reconcile(cx: &mut Ctx<'_>, raw: &RawReconcile) -> ReconcilePolicy {
    let d = ReconcilePolicy::default();
    let backoff_base = cx.duration(&raw.backoff_base, "reconcile.backoff_base", d.backoff_base, MIN_POSITIVE);
    let backoff_max = cx.duration(&raw.backoff_max, "reconcile.backoff_max", d.backoff_max, MIN_POSITIVE);
    if backoff_max < backoff_base {
        cx.error(
            loc(&raw.backoff_max).or(loc(&raw.backoff_base)),
            "reconcile.backoff_max",
            format!(
                "{} is shorter than reconcile.backoff_base ({})",
                human_duration(backoff_max),
                human_duration(backoff_base)
            ),
        );
    }
    ReconcilePolicy {
        resync_interval: cx.duration(
            &raw.resync_interval,
            "reconcile.resync_interval",
            d.resync_interval,
            Duration::from_secs(1),
        ),
        concurrency: to_usize(cx.count(&raw.concurrency, "reconcile.concurrency", d.concurrency as u64, 1, 64)),
        docker_timeout: cx.duration(&raw.docker_timeout, "reconcile.docker_timeout", d.docker_timeout, MIN_POSITIVE),
        startup: cx.value(&raw.startup, "reconcile.startup", d.startup, |s| match s.trim() {
            "adopt" => Ok(StartupMode::Adopt),
            "remove_all" => Ok(StartupMode::RemoveAll),
            "conservative" => Ok(StartupMode::Conservative),
            other => Err(format!("{other:?} is not a startup mode: use adopt, remove_all or conservative")),
        }),
        stale_age: cx.duration(&raw.stale_age, "reconcile.stale_age", d.stale_age, MIN_POSITIVE),
        shutdown: cx.value(&raw.shutdown, "reconcile.shutdown", d.shutdown, |s| match s.trim() {
            "leave" => Ok(ShutdownMode::Leave),
            "remove" => Ok(ShutdownMode::Remove),
            other => Err(format!("{other:?} is not a shutdown mode: use leave or remove")),
        }),
        shutdown_grace: cx.duration(&raw.shutdown_grace, "reconcile.shutdown_grace", d.shutdown_grace, Duration::ZERO),
        start_timeout: cx.duration(&raw.start_timeout, "reconcile.start_timeout", d.start_timeout, MIN_POSITIVE),
        stop_timeout: cx.duration(&raw.stop_timeout, "reconcile.stop_timeout", d.stop_timeout, Duration::ZERO),
        backoff_base,
        backoff_max,
        max_create_attempts: to_u32(cx.count(
            &raw.max_create_attempts,
            "reconcile.max_create_attempts",
            d.max_create_attempts.into(),
            1,
            100,
        )),
    }
}

fn name_prefix(s: &str) -> Result<String, String> {
    let ok = (1..=32).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: use 1 to 32 characters of a-z, 0-9 and '-', not starting with '-'"))
    }
}

fn docker(cx: &mut Ctx<'_>, raw: &RawDocker) -> DockerPolicy {
    let d = DockerPolicy::default();
    DockerPolicy {
        namespace: cx.value(&raw.namespace, "docker.namespace", d.namespace, |s| {
            s.parse::<LabelNamespace>().map_err(|e| e.to_string())
        }),
        name_prefix: cx.value(&raw.name_prefix, "docker.name_prefix", d.name_prefix, name_prefix),
    }
}

fn peers(cx: &mut Ctx<'_>, raw: &RawPeers) -> PeersPolicy {
    let d = PeersPolicy::default();
    PeersPolicy {
        lease_timeout: cx.duration(&raw.lease_timeout, "peers.lease_timeout", d.lease_timeout, Duration::from_secs(1)),
        on_dead: cx.value(&raw.on_dead, "peers.on_dead", d.on_dead, |s| match s.trim() {
            "adopt" => Ok(OnDeadPeer::Adopt),
            "remove" => Ok(OnDeadPeer::Remove),
            other => Err(format!("{other:?} is not a dead-peer mode: use adopt or remove")),
        }),
        image: raw.image.as_ref().map(|_| {
            cx.value(&raw.image, "peers.image", String::new(), super::profile::single_token("an image reference"))
        }),
    }
}
