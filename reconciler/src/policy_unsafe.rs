//! Settings that weaken a session's confinement: which a profile uses ([`Profile::unsafe_settings`]), their names
//! for a profile's `unsafe` acknowledgement list, and the notes `berth policy check` prints. A profile that uses
//! one without acknowledging it is refused by the policy parser (`policy_file::profile`).

use serde::Serialize;

use crate::policy::{Policy, Profile, Tmpfs};

impl Profile {
    /// The settings of this profile that weaken a session's confinement, whether acknowledged or not, in order.
    pub fn unsafe_settings(&self) -> Vec<UnsafeSetting> {
        let sec = &self.security;
        let mut out = Vec::new();
        if sec.seccomp.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("unconfined")) {
            out.push(UnsafeSetting::SeccompUnconfined);
        }
        if sec.apparmor.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("unconfined")) {
            out.push(UnsafeSetting::ApparmorUnconfined);
        }
        if !sec.cap_drop_all {
            out.push(UnsafeSetting::Capabilities);
        }
        if !sec.no_new_privileges {
            out.push(UnsafeSetting::NewPrivileges);
        }
        if runs_as_root(&self.user) {
            out.push(UnsafeSetting::RootUser);
        }
        if sec.tmpfs.iter().any(|t| !t.noexec()) {
            out.push(UnsafeSetting::TmpfsExec);
        }
        if sec.tmpfs.iter().any(|t| !t.bounded()) {
            out.push(UnsafeSetting::TmpfsUnbounded);
        }
        if self.network != "none" {
            out.push(UnsafeSetting::Network);
        }
        out
    }
}

impl Policy {
    /// What `berth policy check` notes beside a valid policy: each weakened setting a profile acknowledges, and
    /// each acknowledgement a profile does not use.
    pub fn unsafe_notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, p) in &self.profiles {
            let used = p.unsafe_settings();
            for u in &used {
                out.push(format!("profiles.{name}: {} (acknowledged): {}", u.as_str(), u.risk()));
            }
            for u in p.acknowledged_unsafe.iter().filter(|u| !used.contains(u)) {
                out.push(format!("profiles.{name}.unsafe: {} is acknowledged but not used; remove it", u.as_str()));
            }
        }
        out
    }
}

impl Tmpfs {
    /// Whether the mount is `noexec` (the last of `exec` and `noexec` wins, as in mount(8)).
    pub fn noexec(&self) -> bool {
        self.options.split(',').rev().find(|o| *o == "exec" || *o == "noexec") == Some("noexec")
    }

    /// Whether the mount has a size other than 0 (which tmpfs takes as unlimited).
    pub fn bounded(&self) -> bool {
        self.options
            .split(',')
            .rev()
            .find_map(|o| o.strip_prefix("size="))
            .is_some_and(|v| !v.is_empty() && !v.trim_start_matches('0').is_empty())
    }
}

/// Whether `user` (`user`, `uid`, `user:group` or `uid:gid`) names root: `root`, or uid 0 however written.
fn runs_as_root(user: &str) -> bool {
    let u = user.split(':').next().unwrap_or(user);
    u == "root" || (!u.is_empty() && u.bytes().all(|b| b == b'0'))
}

/// A setting that weakens a session's confinement. A profile that uses one must list it in `unsafe`; the
/// policy check then reports it as a note rather than refusing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsafeSetting {
    /// `security.seccomp: unconfined`: every system call is allowed.
    SeccompUnconfined,
    /// `security.apparmor: unconfined`: no AppArmor confinement.
    ApparmorUnconfined,
    /// `security.cap_drop_all: false`: Docker's default capabilities (chown, setuid, net_raw and others).
    Capabilities,
    /// `security.no_new_privileges: false`: setuid programs can raise privileges.
    NewPrivileges,
    /// `user: root` (or uid 0): the shell runs as root.
    RootUser,
    /// A tmpfs mount without `noexec`: downloaded programs can run from it.
    TmpfsExec,
    /// A tmpfs mount without a `size=` (or with `size=0`): it may fill the memory.
    TmpfsUnbounded,
    /// `network` other than `none`: sessions reach the network (the host and other containers included).
    Network,
}

impl UnsafeSetting {
    /// Every setting, in order.
    pub const ALL: [Self; 8] = [
        Self::SeccompUnconfined,
        Self::ApparmorUnconfined,
        Self::Capabilities,
        Self::NewPrivileges,
        Self::RootUser,
        Self::TmpfsExec,
        Self::TmpfsUnbounded,
        Self::Network,
    ];

    /// The name a profile's `unsafe` list uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeccompUnconfined => "seccomp_unconfined",
            Self::ApparmorUnconfined => "apparmor_unconfined",
            Self::Capabilities => "capabilities",
            Self::NewPrivileges => "new_privileges",
            Self::RootUser => "root_user",
            Self::TmpfsExec => "tmpfs_exec",
            Self::TmpfsUnbounded => "tmpfs_unbounded",
            Self::Network => "network",
        }
    }

    /// What it costs, in words.
    pub fn risk(self) -> &'static str {
        match self {
            Self::SeccompUnconfined => "every system call is allowed, kernel attack surface included",
            Self::ApparmorUnconfined => "sessions run without an AppArmor profile",
            Self::Capabilities => "sessions keep Docker's default capabilities (chown, setuid, net_raw and others)",
            Self::NewPrivileges => "setuid programs in the image can raise privileges",
            Self::RootUser => "the shell runs as root inside the container",
            Self::TmpfsExec => "a tmpfs mount without noexec lets sessions run programs they download",
            Self::TmpfsUnbounded => "a tmpfs mount without a size may fill the memory",
            Self::Network => "sessions reach the network: the host, other containers and beyond",
        }
    }
}

impl std::str::FromStr for UnsafeSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|u| u.as_str() == s.trim()).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|u| u.as_str()).collect();
            format!("{s:?} is not an unsafe setting: use {}", names.join(", "))
        })
    }
}
