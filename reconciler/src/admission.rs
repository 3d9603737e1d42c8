//! Admission: whether one more session fits under the policy's caps. Pure.

use std::net::IpAddr;

use serde::Serialize;

use crate::desired::{Desired, SessionKind};
use crate::policy::Limits;

/// Why a new session does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    /// The instance-wide cap is reached.
    Full,
    /// The anonymous cap is reached.
    AnonymousFull,
    /// The authenticated cap is reached.
    AuthenticatedFull,
    /// This client IP has its maximum of concurrent sessions.
    PerIp,
}

impl Reject {
    /// The metric and protocol code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::AnonymousFull => "anonymous_full",
            Self::AuthenticatedFull => "authenticated_full",
            Self::PerIp => "per_ip",
        }
    }

    /// Whether waiting in the queue can help (capacity frees as sessions end).
    pub fn queueable(self) -> bool {
        !matches!(self, Self::PerIp)
    }
}

/// Checks the caps for one more session of `kind` from `ip`. Sessions already ending do not count.
///
/// # Errors
/// The first cap that would be exceeded.
pub fn admit(desired: &Desired, limits: &Limits, kind: SessionKind, ip: Option<IpAddr>) -> Result<(), Reject> {
    let (mut total, mut same_kind, mut same_ip) = (0usize, 0usize, 0usize);
    for s in desired.sessions.values().filter(|s| s.ending.is_none()) {
        total += 1;
        if s.kind == kind {
            same_kind += 1;
        }
        if ip.is_some() && s.client_ip == ip {
            same_ip += 1;
        }
    }
    if ip.is_some() && same_ip >= limits.max_per_ip {
        return Err(Reject::PerIp);
    }
    if total >= limits.max_sessions {
        return Err(Reject::Full);
    }
    match kind {
        SessionKind::Anonymous if same_kind >= limits.max_anonymous => Err(Reject::AnonymousFull),
        SessionKind::Authenticated if same_kind >= limits.max_authenticated => Err(Reject::AuthenticatedFull),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::DesiredSession;
    use crate::ids::SessionId;
    use crate::status::EndReason;
    use crate::time::Timestamp;

    fn world(n: u8, kind: SessionKind, ip: IpAddr) -> Desired {
        let mut d = Desired::new("i".parse().expect("valid"));
        for i in 0..n {
            let mut s = DesiredSession::new(
                SessionId::from_bytes([i; 16]),
                "default".parse().expect("valid"),
                kind,
                Timestamp::ZERO,
            );
            s.client_ip = Some(ip);
            d.sessions.insert(s.id, s);
        }
        d
    }

    #[test]
    fn caps_apply_in_order_per_ip_total_then_kind() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let limits =
            Limits { max_sessions: 3, max_anonymous: 2, max_authenticated: 5, max_per_ip: 2, ..Limits::default() };
        let d = world(2, SessionKind::Anonymous, ip);
        assert_eq!(admit(&d, &limits, SessionKind::Anonymous, Some(ip)), Err(Reject::PerIp));
        assert_eq!(admit(&d, &limits, SessionKind::Anonymous, Some(other)), Err(Reject::AnonymousFull));
        assert_eq!(admit(&d, &limits, SessionKind::Authenticated, Some(other)), Ok(()));
        let d3 = world(3, SessionKind::Authenticated, other);
        assert_eq!(admit(&d3, &limits, SessionKind::Anonymous, Some(ip)), Err(Reject::Full));
    }

    #[test]
    fn ending_sessions_free_their_slot() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let limits = Limits { max_sessions: 1, ..Limits::default() };
        let mut d = world(1, SessionKind::Anonymous, ip);
        assert_eq!(admit(&d, &limits, SessionKind::Anonymous, None), Err(Reject::Full));
        for s in d.sessions.values_mut() {
            s.ending = Some(EndReason::Released);
        }
        assert_eq!(admit(&d, &limits, SessionKind::Anonymous, None), Ok(()));
    }
}
