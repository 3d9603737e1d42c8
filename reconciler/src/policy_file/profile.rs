//! Validates one session profile: the image, its environment (and which names a client may set), credentials,
//! resources and confinement. Unset settings keep the hardening defaults of [`Profile::with_image`].

use std::collections::BTreeSet;
use std::time::Duration;

use super::ctx::{Ctx, MIN_POSITIVE, loc};
use super::raw::{RawCredential, RawHealthCheck, RawProfile, RawSecurity, Text};
use super::units::{parse_count, parse_cpus, parse_size};
use crate::policy::{
    CredentialMapping, CredentialSource, DEFAULT_IMAGE, HealthCheck, LogLimits, PoolPolicy, Profile, ProfileRecording,
    ProfileSharing, RecordingMode, Resources, Security, Tmpfs, Ulimit, UnhealthyAction, UnsafeSetting,
};

/// Default tmpfs options when a mount gives none.
pub(crate) const DEFAULT_TMPFS_OPTIONS: &str = "rw,noexec,nosuid,nodev,size=64m";

/// Health check defaults, used for the settings a `healthcheck` leaves out.
pub(crate) const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// See [`DEFAULT_HEALTH_INTERVAL`].
pub(crate) const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// See [`DEFAULT_HEALTH_INTERVAL`].
pub(crate) const DEFAULT_HEALTH_RETRIES: u32 = 3;

/// Docker refuses memory limits below 6 MiB.
const MIN_MEMORY: u64 = 6 << 20;

/// Why a client must never choose the value of `name`, if it must not. Case-insensitive: `http_proxy` and
/// `HTTP_PROXY` alike.
pub(crate) fn dangerous_env(name: &str) -> Option<&'static str> {
    const LOADER: &str = "makes the dynamic loader run code the client chooses";
    const SHELL: &str = "makes the shell read or run code the client chooses";
    const INTERPRETER: &str = "makes an interpreter load code the client chooses";
    let upper = name.to_ascii_uppercase();
    let n = upper.as_str();
    let reason = match n {
        "PATH" => "decides which programs run",
        "HOME" | "SHELL" | "ENV" | "BASH_ENV" | "ZDOTDIR" | "PROMPT_COMMAND" | "PS4" | "SHELLOPTS" | "BASHOPTS" => {
            SHELL
        }
        "IFS" | "CDPATH" | "GLOBIGNORE" => "changes how the shell splits words and finds files",
        "NODE_OPTIONS" | "NODE_PATH" | "PERL5OPT" | "PERL5LIB" | "PERLLIB" | "RUBYOPT" | "RUBYLIB"
        | "JAVA_TOOL_OPTIONS" | "_JAVA_OPTIONS" | "JDK_JAVA_OPTIONS" => INTERPRETER,
        "GCONV_PATH" | "HOSTALIASES" | "LOCALDOMAIN" | "RES_OPTIONS" | "TMPDIR" | "LOCPATH" | "NLSPATH"
        | "GLIBC_TUNABLES" => "changes where the C library loads modules or data from, or how it behaves",
        "TERMINFO" | "TERMINFO_DIRS" | "TERMCAP" => "makes terminal programs parse files the client chooses",
        "LESSOPEN" | "LESSCLOSE" | "PAGER" | "MANPAGER" | "GIT_PAGER" | "EDITOR" | "VISUAL" | "GIT_EDITOR"
        | "BROWSER" | "GIT_SSH" | "GIT_SSH_COMMAND" | "GIT_ASKPASS" | "SSH_ASKPASS" | "GIT_EXEC_PATH" => {
            "names a command that programs run"
        }
        _ if n.ends_with("_PROXY") => "sends the session's traffic through a proxy the client chooses",
        _ if n.starts_with("LD_") || n.starts_with("DYLD_") => LOADER,
        _ if n.starts_with("PYTHON") => INTERPRETER,
        _ if n.starts_with("BASH_FUNC_") => SHELL,
        _ => return None,
    };
    Some(reason)
}

/// Whether `name` is a valid environment variable name.
pub(crate) fn valid_env_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn env_name(s: &str) -> Result<String, String> {
    if valid_env_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an environment variable name: use letters, digits and '_', not starting with a digit"
        ))
    }
}

fn no_nul(s: &str) -> Result<String, String> {
    if s.contains('\0') { Err("must not contain NUL characters".into()) } else { Ok(s.to_owned()) }
}

pub(super) fn single_token(what: &'static str) -> impl Fn(&str) -> Result<String, String> {
    move |s: &str| {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(format!("{s:?} is not {what}: it must be non-empty, without spaces"))
        } else {
            Ok(s.to_owned())
        }
    }
}

fn user(s: &str) -> Result<String, String> {
    let part = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    let ok = match s.split_once(':') {
        Some((u, g)) => part(u) && part(g),
        None => part(s),
    };
    if ok { Ok(s.to_owned()) } else { Err(format!("{s:?}: use user, uid, user:group or uid:gid, such as 1000:1000")) }
}

fn absolute_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && !s.contains('\0') {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not an absolute path"))
    }
}

fn network(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s == "host" {
        return Err("host would give sessions the host's network, including services bound to localhost".into());
    }
    if s.starts_with("container:") {
        return Err("container: networking would let sessions reach into another container's network".into());
    }
    let ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok { Ok(s.to_owned()) } else { Err(format!("{s:?}: use none, bridge or the name of a Docker network")) }
}

/// Docker's json-file `max-size` for a byte count.
fn docker_size(n: u64) -> String {
    for (shift, unit) in [(30, "g"), (20, "m"), (10, "k")] {
        if n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Validates `profiles.<name>`; `name` locates errors about the profile as a whole.
pub(crate) fn profile(cx: &mut Ctx<'_>, path: &str, name: &Text, raw: &RawProfile, jwt_configured: bool) -> Profile {
    let at = |key: &str| format!("{path}.{key}");
    let image = match &raw.image {
        None => {
            cx.bad(name, &at("image"), "missing: every profile names the image it runs");
            DEFAULT_IMAGE.to_owned()
        }
        Some(_) => cx.value(&raw.image, &at("image"), DEFAULT_IMAGE.into(), single_token("an image reference")),
    };
    let mut p = Profile::with_image(image);
    if let Some(cmd) = &raw.command {
        if cmd.is_empty() {
            cx.bad(name, &at("command"), "is empty: leave it unset (or null) to run the image's default command");
        }
        p.command = Some(cmd.iter().filter_map(|t| cx.item(t, &at("command"), no_nul)).collect());
    }
    for (key, value) in raw.env.iter().flat_map(|e| &e.0) {
        let (Some(k), Some(v)) = (cx.item(key, &at("env"), env_name), cx.item(value, &at("env"), no_nul)) else {
            continue;
        };
        p.env.insert(k, v);
    }
    p.credentials = credentials(cx, path, raw.credentials.as_deref().unwrap_or_default(), &p, jwt_configured);
    p.client_env = client_env(cx, path, name, raw, &p);
    p.user = cx.value(&raw.user, &at("user"), p.user, user);
    p.working_dir = cx.optional(&raw.working_dir, &at("working_dir"), absolute_path);
    if let Some(r) = &raw.resources {
        let d = Resources::default();
        let memory = cx.size(&r.memory, &at("resources.memory"), d.memory_bytes as u64, MIN_MEMORY, 1 << 40);
        p.resources = Resources {
            memory_bytes: i64::try_from(memory).unwrap_or(d.memory_bytes),
            nano_cpus: cx.value(&r.cpus, &at("resources.cpus"), d.nano_cpus, parse_cpus),
            pids: i64::try_from(cx.count(&r.pids, &at("resources.pids"), d.pids as u64, 1, 1_000_000))
                .unwrap_or(d.pids),
            nofile: cx.value(&r.nofile, &at("resources.nofile"), d.nofile, |s| ulimit(s, 16, MAX_NOFILE)),
            nproc: cx.value(&r.nproc, &at("resources.nproc"), d.nproc, |s| ulimit(s, 1, MAX_NPROC)),
            core: cx.value(&r.core, &at("resources.core"), d.core, core_limit),
        };
    }
    if let Some(s) = &raw.security {
        p.security = security(cx, &at("security"), s);
    }
    p.network = cx.value(&raw.network, &at("network"), p.network, network);
    p.acknowledged_unsafe = acknowledged_unsafe(cx, &at("unsafe"), raw);
    p.healthcheck = raw.healthcheck.as_ref().and_then(|h| healthcheck(cx, &at("healthcheck"), name, h));
    p.on_unhealthy = cx.value(&raw.on_unhealthy, &at("on_unhealthy"), p.on_unhealthy, |s| match s.trim() {
        "report" => Ok(UnhealthyAction::Report),
        "replace" => Ok(UnhealthyAction::Replace),
        other => Err(format!("{other:?} is not an action: use report or replace")),
    });
    if let Some(l) = &raw.logs {
        let d = LogLimits::default();
        let max_size = l.max_size.as_ref().map(|_| {
            let n = cx.size(&l.max_size, &at("logs.max_size"), 1 << 20, 1 << 10, 1 << 30);
            docker_size(n)
        });
        p.logs = LogLimits {
            max_size: max_size.unwrap_or(d.max_size),
            max_files: u32::try_from(cx.count(&l.max_files, &at("logs.max_files"), d.max_files.into(), 1, 100))
                .unwrap_or(d.max_files),
        };
    }
    p.runtime = cx.optional(&raw.runtime, &at("runtime"), runtime_name);
    if let Some(r) = &raw.recording {
        let d = ProfileRecording::default();
        p.recording = ProfileRecording {
            mode: cx.value(&r.mode, &at("recording.mode"), d.mode, |s| match s.trim() {
                "off" => Ok(RecordingMode::Off),
                "best_effort" => Ok(RecordingMode::BestEffort),
                "required" => Ok(RecordingMode::Required),
                other => Err(format!("{other:?} is not a recording mode: use off, best_effort or required")),
            }),
            input: cx.boolean(&r.input, &at("recording.input"), d.input),
            max_bytes: cx.size(&r.max_size, &at("recording.max_size"), d.max_bytes, 4 << 10, 1 << 40),
        };
    }
    if let Some(sh) = &raw.sharing {
        let d = ProfileSharing::default();
        p.sharing = ProfileSharing {
            enabled: cx.boolean(&sh.enabled, &at("sharing.enabled"), d.enabled),
            max_viewers: u32::try_from(cx.count(
                &sh.max_viewers,
                &at("sharing.max_viewers"),
                d.max_viewers.into(),
                1,
                1000,
            ))
            .unwrap_or(d.max_viewers),
            max_grant_ttl: cx.duration(
                &sh.max_grant_ttl,
                &at("sharing.max_grant_ttl"),
                d.max_grant_ttl,
                Duration::from_secs(60),
            ),
            anonymous: cx.boolean(&sh.anonymous, &at("sharing.anonymous"), d.anonymous),
        };
    }
    if let Some(pool) = &raw.pool {
        p.pool = PoolPolicy {
            size: usize::try_from(cx.count(&pool.size, &at("pool.size"), 0, 0, MAX_POOL)).unwrap_or(0),
            max_age: cx.duration(&pool.max_age, &at("pool.max_age"), PoolPolicy::DEFAULT_MAX_AGE, MIN_POOL_AGE),
        };
        if let (false, Some(why), Some(t)) = (p.pool.is_off(), p.not_poolable(), &pool.size) {
            cx.bad(t, &at("pool.size"), format!("this profile cannot keep a pool: {why}"));
        }
    }
    refuse_unacknowledged(cx, path, name, raw, &p);
    p
}

/// The largest warm pool of one profile.
const MAX_POOL: u64 = 1000;
/// The shortest `pool.max_age`: a pool recycled faster than this does little but churn.
const MIN_POOL_AGE: Duration = Duration::from_secs(10);

/// Linux's default ceiling on open files (`fs.nr_open`).
const MAX_NOFILE: u64 = 1 << 20;
/// Linux's ceiling on process ids (`kernel.pid_max` at most).
const MAX_NPROC: u64 = 1 << 22;

/// `1024` (soft and hard alike) or `1024:4096` (soft, hard), each within `min..=max`.
fn ulimit(s: &str, min: u64, max: u64) -> Result<Ulimit, String> {
    let one = |v: &str| parse_count(v, min, max);
    let limit = match s.trim().split_once(':') {
        None => Ulimit::fixed(one(s)?),
        Some((soft, hard)) => Ulimit { soft: one(soft)?, hard: one(hard)? },
    };
    if limit.soft > limit.hard {
        return Err(format!("{}: the soft limit must not exceed the hard limit (soft:hard)", s.trim()));
    }
    Ok(limit)
}

/// A core dump size: `0` (none, the default) up to `1GiB`, soft and hard alike.
fn core_limit(s: &str) -> Result<Ulimit, String> {
    let n = parse_size(s)?;
    if n > 1 << 30 {
        return Err(format!("{} is out of range: use 0 to 1GiB", s.trim()));
    }
    Ok(Ulimit::fixed(n))
}

/// `profiles.<name>.unsafe`: the weakened settings the profile acknowledges.
fn acknowledged_unsafe(cx: &mut Ctx<'_>, key: &str, raw: &RawProfile) -> BTreeSet<UnsafeSetting> {
    let mut out = BTreeSet::new();
    for t in raw.acknowledged_unsafe.iter().flatten() {
        if let Some(u) = cx.item(t, key, str::parse::<UnsafeSetting>)
            && !out.insert(u)
        {
            cx.bad(t, key, format!("{} is listed twice", u.as_str()));
        }
    }
    out
}

/// Refuses every weakened setting the profile uses without listing it in `unsafe`, located at the value.
fn refuse_unacknowledged(cx: &mut Ctx<'_>, path: &str, name: &Text, raw: &RawProfile, p: &Profile) {
    let sec = raw.security.as_ref();
    let tmpfs = |bad: &dyn Fn(&Tmpfs) -> bool| {
        let list = sec.and_then(|s| s.tmpfs.as_ref())?;
        let i = p.security.tmpfs.iter().position(bad)?;
        let mount = &p.security.tmpfs[i].path;
        let raw = list.iter().find(|r| r.path.as_ref().is_some_and(|t| &t.value == mount))?;
        raw.options.as_ref().or(raw.path.as_ref())
    };
    for u in p.unsafe_settings() {
        if p.acknowledged_unsafe.contains(&u) {
            continue;
        }
        let (key, at) = match u {
            UnsafeSetting::SeccompUnconfined => ("security.seccomp", sec.and_then(|s| s.seccomp.as_ref())),
            UnsafeSetting::ApparmorUnconfined => ("security.apparmor", sec.and_then(|s| s.apparmor.as_ref())),
            UnsafeSetting::Capabilities => ("security.cap_drop_all", sec.and_then(|s| s.cap_drop_all.as_ref())),
            UnsafeSetting::NewPrivileges => {
                ("security.no_new_privileges", sec.and_then(|s| s.no_new_privileges.as_ref()))
            }
            UnsafeSetting::RootUser => ("user", raw.user.as_ref()),
            UnsafeSetting::TmpfsExec => ("security.tmpfs", tmpfs(&|t| !t.noexec())),
            UnsafeSetting::TmpfsUnbounded => ("security.tmpfs", tmpfs(&|t| !t.bounded())),
            UnsafeSetting::Network => ("network", raw.network.as_ref()),
        };
        let reason = format!(
            "unsafe: {}; refused unless the profile acknowledges it with `unsafe: [{}]` in {path}",
            u.risk(),
            u.as_str()
        );
        cx.bad(at.unwrap_or(name), &format!("{path}.{key}"), reason);
    }
}

/// An OCI runtime name as the engine registers it (`runc`, `runsc`); whether the engine has it is checked when
/// berth starts or reloads, against the engine.
fn runtime_name(s: &str) -> Result<String, String> {
    let ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not a runtime name: use the name the engine registered, such as runc or runsc"))
    }
}

fn credentials(
    cx: &mut Ctx<'_>,
    path: &str,
    raw: &[RawCredential],
    p: &Profile,
    jwt_configured: bool,
) -> Vec<CredentialMapping> {
    let mut out: Vec<CredentialMapping> = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let at = format!("{path}.credentials[{i}]");
        let anchor = loc(&c.env).or(loc(&c.claim)).or(loc(&c.hello));
        let from = match (&c.claim, &c.hello) {
            (Some(claim), None) => {
                if !jwt_configured {
                    cx.bad(claim, &format!("{at}.claim"), "maps a JWT claim, but auth.jwt is not configured");
                }
                cx.item(claim, &format!("{at}.claim"), single_token("a claim name")).map(CredentialSource::Claim)
            }
            (None, Some(hello)) => {
                cx.item(hello, &format!("{at}.hello"), single_token("a hello field name")).map(CredentialSource::Hello)
            }
            (Some(_), Some(hello)) => {
                cx.bad(hello, &format!("{at}.hello"), "set claim or hello, not both");
                None
            }
            (None, None) => {
                cx.error(anchor, &at, "missing a source: set claim (a JWT claim) or hello (a hello credential)");
                None
            }
        };
        let env = match &c.env {
            None => {
                cx.error(anchor, &format!("{at}.env"), "missing: name the environment variable the credential becomes");
                None
            }
            Some(t) => cx.item(t, &format!("{at}.env"), env_name).filter(|name| {
                let refused = if let Some(reason) = dangerous_env(name) {
                    Some(format!("{name} cannot carry a credential: it {reason}"))
                } else if p.env.contains_key(name) {
                    Some(format!("{name} is also set in {path}.env; choose one"))
                } else if out.iter().any(|m| &m.env == name) {
                    Some(format!("{name} receives two credentials"))
                } else {
                    None
                };
                if let Some(reason) = &refused {
                    cx.bad(t, &format!("{at}.env"), reason);
                }
                refused.is_none()
            }),
        };
        if let (Some(from), Some(env)) = (from, env) {
            out.push(CredentialMapping { from, env });
        }
    }
    out
}

fn client_env(cx: &mut Ctx<'_>, path: &str, name: &Text, raw: &RawProfile, p: &Profile) -> Vec<String> {
    let key = format!("{path}.client_env");
    let refusal = |n: &str| -> Option<String> {
        if let Some(reason) = dangerous_env(n) {
            Some(format!(
                "{n} must not be set by clients: it {reason}; remove it (or give it a fixed value in {path}.env)"
            ))
        } else if p.env.contains_key(n) {
            Some(format!("{n} is set in {path}.env, and a client must not override a fixed value"))
        } else if p.credentials.iter().any(|c| c.env == n) {
            Some(format!("{n} is set from credentials, and a client must not forge it"))
        } else {
            None
        }
    };
    let Some(list) = &raw.client_env else {
        // The default allowlist still must not let a client override what this profile fixes.
        for n in &p.client_env {
            if let Some(reason) = refusal(n) {
                let defaults = p.client_env.join(", ");
                cx.bad(name, &key, format!("by default {defaults}: {reason}; list client_env explicitly"));
            }
        }
        return p.client_env.clone();
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for t in list {
        let Some(n) = cx.item(t, &key, env_name) else { continue };
        if let Some(reason) = refusal(&n) {
            cx.bad(t, &key, reason);
        } else if !seen.insert(n.clone()) {
            cx.bad(t, &key, format!("{n} is listed twice"));
        } else {
            out.push(n);
        }
    }
    out
}

fn security(cx: &mut Ctx<'_>, path: &str, raw: &RawSecurity) -> Security {
    let d = Security::default();
    let at = |key: &str| format!("{path}.{key}");
    let tmpfs = match &raw.tmpfs {
        None => d.tmpfs,
        Some(list) => {
            let mut seen = BTreeSet::new();
            let mut out = Vec::new();
            for (i, t) in list.iter().enumerate() {
                let item = format!("{path}.tmpfs[{i}]");
                let Some(mount) = cx.optional(&t.path, &format!("{item}.path"), absolute_path) else {
                    if t.path.is_none() {
                        cx.error(loc(&t.options), &format!("{item}.path"), "missing: name the mount point");
                    }
                    continue;
                };
                if mount == "/" || !seen.insert(mount.clone()) {
                    let reason = if mount == "/" { "cannot mount over /" } else { "is mounted twice" };
                    cx.error(loc(&t.path), &format!("{item}.path"), format!("{mount} {reason}"));
                    continue;
                }
                let options = cx.value(
                    &t.options,
                    &format!("{item}.options"),
                    DEFAULT_TMPFS_OPTIONS.into(),
                    single_token("a list of mount options"),
                );
                out.push(Tmpfs { path: mount, options });
            }
            out
        }
    };
    Security {
        read_only_root: cx.boolean(&raw.read_only_root, &at("read_only_root"), d.read_only_root),
        cap_drop_all: cx.boolean(&raw.cap_drop_all, &at("cap_drop_all"), d.cap_drop_all),
        no_new_privileges: cx.boolean(&raw.no_new_privileges, &at("no_new_privileges"), d.no_new_privileges),
        init: cx.boolean(&raw.init, &at("init"), d.init),
        tmpfs,
        seccomp: cx.optional(&raw.seccomp, &at("seccomp"), single_token("a seccomp profile")),
        apparmor: cx.optional(&raw.apparmor, &at("apparmor"), single_token("an AppArmor profile")),
    }
}

fn healthcheck(cx: &mut Ctx<'_>, path: &str, name: &Text, raw: &RawHealthCheck) -> Option<HealthCheck> {
    let at = |key: &str| format!("{path}.{key}");
    let command: Vec<String> =
        raw.command.iter().flatten().filter_map(|t| cx.item(t, &at("command"), no_nul)).collect();
    if raw.command.as_ref().is_none_or(Vec::is_empty) {
        cx.bad(name, &at("command"), "missing: a health check runs a command, such as [test, -d, /tmp]");
    }
    let check = HealthCheck {
        command,
        interval: cx.duration(&raw.interval, &at("interval"), DEFAULT_HEALTH_INTERVAL, MIN_POSITIVE),
        timeout: cx.duration(&raw.timeout, &at("timeout"), DEFAULT_HEALTH_TIMEOUT, MIN_POSITIVE),
        retries: u32::try_from(cx.count(&raw.retries, &at("retries"), DEFAULT_HEALTH_RETRIES.into(), 1, 100))
            .unwrap_or(DEFAULT_HEALTH_RETRIES),
        start_period: cx.duration(&raw.start_period, &at("start_period"), Duration::ZERO, Duration::ZERO),
    };
    (!check.command.is_empty()).then_some(check)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_file::ctx::human_size;

    #[test]
    fn loader_shell_and_interpreter_variables_are_dangerous() {
        for name in ["PATH", "LD_PRELOAD", "ld_library_path", "LD_AUDIT", "HOME", "SHELL", "ENV", "BASH_ENV", "PS4"] {
            assert!(dangerous_env(name).is_some(), "{name}");
        }
        for name in ["IFS", "NODE_OPTIONS", "PYTHONPATH", "PYTHONSTARTUP", "BASH_FUNC_ls%%"] {
            assert!(dangerous_env(name).is_some(), "{name}");
        }
        for name in ["TERM", "LANG", "LC_ALL", "COLUMNS", "TZ", "COLORTERM", "PROXY", "TERMINFOX"] {
            assert!(dangerous_env(name).is_none(), "{name}");
        }
    }

    #[test]
    fn locale_terminal_pager_editor_git_and_proxy_variables_are_dangerous() {
        let issue = [
            "LOCPATH",
            "NLSPATH",
            "GLIBC_TUNABLES",
            "TERMINFO",
            "GCONV_PATH",
            "LESSOPEN",
            "PAGER",
            "EDITOR",
            "GIT_SSH_COMMAND",
        ];
        let proxies = ["http_proxy", "HTTPS_PROXY", "ftp_proxy", "no_proxy", "ALL_PROXY", "all_proxy", "Https_Proxy"];
        let more = ["TERMINFO_DIRS", "VISUAL", "GIT_SSH", "GIT_ASKPASS", "MANPAGER", "LESSCLOSE"];
        for name in issue.iter().chain(&proxies).chain(&more) {
            assert!(dangerous_env(name).is_some(), "{name}");
        }
    }

    #[test]
    fn environment_names_are_shell_identifiers() {
        assert!(valid_env_name("_A1"));
        for bad in ["", "1A", "A-B", "A B", "A=B", "É"] {
            assert!(!valid_env_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn log_sizes_use_docker_suffixes() {
        assert_eq!(docker_size(1 << 20), "1m");
        assert_eq!(docker_size(64 << 10), "64k");
        assert_eq!(docker_size(2 << 30), "2g");
        assert_eq!(docker_size(1500), "1500");
        assert_eq!(human_size(1 << 20), "1MiB");
    }
}
