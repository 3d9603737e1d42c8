//! Share grants (decision 0026): capabilities the owner of a session hands out so that others may watch it
//! (`viewer`) or type into it (`writer`), and the connections that joined through them. Owned by the controller
//! task, like the session table; kept in memory only, so a restart of berth forgets every grant (the owner shares
//! again). Only a grant's SHA-256 verifier is kept, never its secret.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_reconciler::{SessionId, Timestamp, resume_hash, resume_hash_matches};
use serde::Serialize;
use tokio::sync::watch;

/// What a grant lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees the output; input and resizes are dropped.
    Viewer,
    /// Types and resizes as the owner does.
    Writer,
}

impl Role {
    /// Every role (metric series pre-created at zero).
    pub const ALL: [Self; 2] = [Self::Viewer, Self::Writer];

    /// As the protocol and the metric label spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Writer => "writer",
        }
    }

    /// Parses the protocol's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "writer" => Some(Self::Writer),
            _ => None,
        }
    }
}

/// Live grants kept per session at most (revoking or letting one expire makes room).
pub const MAX_GRANTS_PER_SESSION: usize = 32;

/// One connection joined through a grant, as the owner's presence shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Present {
    /// The grant it joined with.
    pub grant_id: String,
    /// Its role.
    pub role: Role,
    /// Who: the joiner's token identity, else the grant's label; `None` when neither is known.
    pub identity: Option<String>,
}

/// Who is connected to a session through grants.
pub type Presence = Vec<Present>;

/// A grant just made: the secret is handed to the owner once and kept nowhere.
#[derive(Debug, Clone)]
pub struct Granted {
    /// The grant's public id (for `revoke` and presence).
    pub grant_id: String,
    /// The capability.
    pub secret: String,
    /// Its role.
    pub role: Role,
    /// When it stops working.
    pub expires_at: Timestamp,
}

/// A connection joined through a grant.
#[derive(Debug)]
pub struct Joined {
    /// The grant's id.
    pub grant_id: String,
    /// The role.
    pub role: Role,
    /// When the grant expires: the connection is closed then.
    pub expires_at: Timestamp,
    /// Flips to true when the grant is revoked.
    pub revoked: watch::Receiver<bool>,
    /// This joiner's number, to say it left.
    pub conn: u64,
}

/// Why a share or revoke was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// The caller does not hold the session (a resume took it over, or it ended).
    #[error("this connection does not hold the session")]
    NotHolder,
    /// The profile does not allow sharing, or not by an anonymous owner.
    #[error("{0}")]
    NotAllowed(&'static str),
    /// Too many live grants on this session.
    #[error("this session has {MAX_GRANTS_PER_SESSION} live grants; revoke one first")]
    TooMany,
    /// No such grant on this session.
    #[error("no such grant on this session")]
    UnknownGrant,
    /// The random source failed.
    #[error("no random bytes for a grant")]
    Random,
    /// The controller is gone.
    #[error("controller stopped")]
    Stopped,
}

/// Why a join was refused. Unknown sessions, unknown secrets and revoked grants are one answer: no oracle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Unknown session, wrong or revoked grant, ended session, or sharing since turned off.
    #[error("unknown session or grant")]
    Refused,
    /// The grant's time is up.
    #[error("the grant has expired")]
    Expired,
    /// The session has as many joined connections as its profile allows.
    #[error("the session has {0} viewers, as many as its profile allows")]
    Full(u32),
    /// The controller is gone.
    #[error("controller stopped")]
    Stopped,
}

#[derive(Debug)]
struct Grant {
    session: SessionId,
    verifier: String,
    role: Role,
    expires_at: Timestamp,
    label: Option<String>,
    revoked: watch::Sender<bool>,
}

/// Every grant, and who joined through them.
#[derive(Debug, Default)]
pub(super) struct Grants {
    grants: BTreeMap<String, Grant>,
    joined: HashMap<SessionId, BTreeMap<u64, Present>>,
    presence: HashMap<SessionId, watch::Sender<Presence>>,
    next_conn: u64,
}

impl Grants {
    /// Makes a grant on `session` for `ttl` from `now`.
    pub(super) fn create(
        &mut self,
        session: SessionId,
        role: Role,
        ttl: Duration,
        label: Option<String>,
        now: Timestamp,
    ) -> Result<Granted, ShareError> {
        self.expire(now);
        if self.grants.values().filter(|g| g.session == session).count() >= MAX_GRANTS_PER_SESSION {
            return Err(ShareError::TooMany);
        }
        let secret = random_hex(32)?;
        let grant_id = random_hex(8)?;
        let expires_at = now.add(ttl);
        let (revoked, _) = watch::channel(false);
        self.grants.insert(
            grant_id.clone(),
            Grant { session, verifier: resume_hash(&secret), role, expires_at, label, revoked },
        );
        Ok(Granted { grant_id, secret, role, expires_at })
    }

    /// Revokes a grant of `session`: every connection that joined through it is told to close.
    pub(super) fn revoke(&mut self, session: SessionId, grant_id: &str) -> Result<Role, ShareError> {
        match self.grants.get(grant_id) {
            Some(g) if g.session == session => {}
            _ => return Err(ShareError::UnknownGrant),
        }
        let g = self.grants.remove(grant_id).ok_or(ShareError::UnknownGrant)?;
        g.revoked.send_replace(true);
        Ok(g.role)
    }

    /// Checks `secret` against `session`'s grants and, when one matches and has room, joins.
    pub(super) fn join(
        &mut self,
        session: SessionId,
        secret: &str,
        identity: Option<String>,
        max_viewers: u32,
        now: Timestamp,
    ) -> Result<Joined, JoinError> {
        let (grant_id, g) = self
            .grants
            .iter()
            .find(|(_, g)| g.session == session && resume_hash_matches(&g.verifier, secret))
            .ok_or(JoinError::Refused)?;
        if now >= g.expires_at {
            return Err(JoinError::Expired);
        }
        let joined = self.joined.entry(session).or_default();
        if joined.len() >= max_viewers as usize {
            return Err(JoinError::Full(max_viewers));
        }
        self.next_conn += 1;
        let conn = self.next_conn;
        let identity = identity.or_else(|| g.label.clone());
        joined.insert(conn, Present { grant_id: grant_id.clone(), role: g.role, identity });
        let out = Joined {
            grant_id: grant_id.clone(),
            role: g.role,
            expires_at: g.expires_at,
            revoked: g.revoked.subscribe(),
            conn,
        };
        self.publish(session);
        Ok(out)
    }

    /// A joined connection left.
    pub(super) fn leave(&mut self, session: SessionId, conn: u64) -> Option<Role> {
        let role = self.joined.get_mut(&session)?.remove(&conn)?.role;
        self.publish(session);
        Some(role)
    }

    /// Who is connected to `session` through grants, as it changes.
    pub(super) fn presence(&mut self, session: SessionId) -> watch::Receiver<Presence> {
        let now = self.present(session);
        self.presence.entry(session).or_insert_with(|| watch::channel(now).0).subscribe()
    }

    fn present(&self, session: SessionId) -> Presence {
        self.joined.get(&session).map(|j| j.values().cloned().collect()).unwrap_or_default()
    }

    fn publish(&mut self, session: SessionId) {
        let now = self.present(session);
        if let Some(tx) = self.presence.get(&session) {
            tx.send_replace(now);
        }
    }

    /// The session is gone: its grants go with it (its connections see the end through their status).
    /// Returns how many joined connections it had, by role.
    pub(super) fn forget(&mut self, session: &SessionId) -> Vec<Role> {
        self.grants.retain(|_, g| g.session != *session);
        self.presence.remove(session);
        self.joined.remove(session).map(|j| j.into_values().map(|p| p.role).collect()).unwrap_or_default()
    }

    /// Drops grants expired for longer than a day (an expired grant is kept a while so that it is refused as
    /// expired rather than unknown).
    fn expire(&mut self, now: Timestamp) {
        let day = Duration::from_secs(86_400);
        self.grants.retain(|_, g| now < g.expires_at.add(day));
    }

    /// Live grants on `session` (for tests).
    #[cfg(test)]
    fn live(&self, session: SessionId) -> usize {
        self.grants.values().filter(|g| g.session == session).count()
    }
}

fn random_hex(n: usize) -> Result<String, ShareError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|_| ShareError::Random)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SessionId {
        "0123456789abcdef0123456789abcdef".parse().expect("session id")
    }

    #[test]
    fn a_grant_admits_its_secret_only_until_it_expires_or_is_revoked() {
        let mut g = Grants::default();
        let now = Timestamp::from_millis(1_000_000);
        let made = g.create(id(), Role::Viewer, Duration::from_secs(60), Some("bob".into()), now).expect("grant");
        assert_ne!(made.secret, made.grant_id);
        assert_eq!(g.join(id(), "wrong", None, 8, now).map(|_| ()), Err(JoinError::Refused));
        let other: SessionId = "f123456789abcdef0123456789abcdef".parse().expect("id");
        assert_eq!(g.join(other, &made.secret, None, 8, now).map(|_| ()), Err(JoinError::Refused));
        let mut presence = g.presence(id());
        let j = g.join(id(), &made.secret, None, 8, now).expect("joins");
        assert_eq!(j.role, Role::Viewer);
        assert!(presence.has_changed().expect("open"));
        assert_eq!(presence.borrow_and_update()[0].identity.as_deref(), Some("bob"), "the grant's label");
        let later = now.add(Duration::from_secs(61));
        assert_eq!(g.join(id(), &made.secret, None, 8, later).map(|_| ()), Err(JoinError::Expired));
        assert_eq!(g.revoke(other, &made.grant_id), Err(ShareError::UnknownGrant), "only on its own session");
        assert_eq!(g.revoke(id(), &made.grant_id), Ok(Role::Viewer));
        assert!(*j.revoked.borrow(), "its connections are told");
        assert_eq!(g.join(id(), &made.secret, None, 8, now).map(|_| ()), Err(JoinError::Refused));
        assert_eq!(g.leave(id(), j.conn), Some(Role::Viewer));
        assert!(presence.borrow_and_update().is_empty());
    }

    #[test]
    fn joins_stop_at_max_viewers_and_grants_at_the_per_session_bound() {
        let mut g = Grants::default();
        let now = Timestamp::from_millis(1_000_000);
        let made = g.create(id(), Role::Writer, Duration::from_secs(60), None, now).expect("grant");
        let a = g.join(id(), &made.secret, Some("alice".into()), 2, now).expect("first");
        g.join(id(), &made.secret, None, 2, now).expect("second");
        assert_eq!(g.join(id(), &made.secret, None, 2, now).map(|_| ()), Err(JoinError::Full(2)));
        g.leave(id(), a.conn);
        g.join(id(), &made.secret, None, 2, now).expect("room again");
        for _ in 1..MAX_GRANTS_PER_SESSION {
            g.create(id(), Role::Viewer, Duration::from_secs(60), None, now).expect("grant");
        }
        assert_eq!(
            g.create(id(), Role::Viewer, Duration::from_secs(60), None, now).map(|_| ()).err(),
            Some(ShareError::TooMany)
        );
        assert_eq!(g.forget(&id()).len(), 2);
        assert_eq!(g.live(id()), 0);
    }
}
