//! Admission: whether one more session fits under the policy's caps, which waiter in the queue goes next, and
//! how client addresses group for every per-IP rule. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// The address that stands for `ip` in every per-IP rule (session cap, queue bound, connection rate, pending
/// connections): its network of `limits.ipv4_prefix` or `limits.ipv6_prefix` bits. One host usually holds a
/// whole IPv6 /64, so counting its addresses one by one would give it billions of budgets. IPv4-mapped IPv6
/// addresses count as IPv4.
pub fn ip_key(ip: IpAddr, limits: &Limits) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let bits = u32::from(limits.ipv4_prefix.min(32));
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u32::from(limits.ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// Checks the caps for one more session of `kind` from `ip`. Sessions already ending do not count.
///
/// # Errors
/// The first cap that would be exceeded.
pub fn admit(desired: &Desired, limits: &Limits, kind: SessionKind, ip: Option<IpAddr>) -> Result<(), Reject> {
    let (mut total, mut same_kind, mut same_ip) = (0usize, 0usize, 0usize);
    let key = ip.map(|ip| ip_key(ip, limits));
    for s in desired.sessions.values().filter(|s| s.ending.is_none()) {
        total += 1;
        if s.kind == kind {
            same_kind += 1;
        }
        if key.is_some() && s.client_ip.map(|c| ip_key(c, limits)) == key {
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

/// One client waiting in the admission queue, as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The kind of session it asks for.
    pub kind: SessionKind,
    /// Its address, when known.
    pub ip: Option<IpAddr>,
}

/// The first waiter, in queue order, that fits now. A waiter held back only by its own per-IP cap, or by its
/// kind's cap, does not hold up the waiters behind it.
pub fn first_admissible(desired: &Desired, limits: &Limits, queue: &[Candidate]) -> Option<usize> {
    queue.iter().position(|c| admit(desired, limits, c.kind, c.ip).is_ok())
}

/// Whether a client from `ip` may join the queue, which already holds `queue`: at most `limits.max_queued_per_ip`
/// waiters per client address (grouped as [`ip_key`] says). A client without a known address is not bounded
/// here; the queue's own length still applies.
pub fn may_queue(limits: &Limits, queue: &[Candidate], ip: Option<IpAddr>) -> bool {
    let Some(key) = ip.map(|ip| ip_key(ip, limits)) else {
        return true;
    };
    let same = queue.iter().filter(|c| c.ip.map(|c| ip_key(c, limits)) == Some(key)).count();
    same < limits.max_queued_per_ip
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

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn ipv6_clients_in_one_64_share_the_per_ip_cap() {
        let limits = Limits { max_per_ip: 1, ..Limits::default() };
        let d = world(1, SessionKind::Anonymous, ip("2001:db8:aa:bb::1"));
        assert_eq!(admit(&d, &limits, SessionKind::Anonymous, Some(ip("2001:db8:aa:bb::2"))), Err(Reject::PerIp));
        assert_eq!(admit(&d, &limits, SessionKind::Anonymous, Some(ip("2001:db8:aa:cc::1"))), Ok(()));
        let exact = Limits { ipv6_prefix: 128, ..limits.clone() };
        assert_eq!(admit(&d, &exact, SessionKind::Anonymous, Some(ip("2001:db8:aa:bb::2"))), Ok(()));
    }

    #[test]
    fn ip_keys_follow_the_configured_prefixes() {
        let d = Limits::default();
        assert_eq!(ip_key(ip("192.0.2.77"), &d), ip("192.0.2.77"));
        assert_eq!(ip_key(ip("::ffff:192.0.2.77"), &d), ip("192.0.2.77"));
        assert_eq!(ip_key(ip("2001:db8:aa:bb:1:2:3:4"), &d), ip("2001:db8:aa:bb::"));
        let wide = Limits { ipv4_prefix: 24, ipv6_prefix: 48, ..Limits::default() };
        assert_eq!(ip_key(ip("192.0.2.77"), &wide), ip("192.0.2.0"));
        assert_eq!(ip_key(ip("2001:db8:aa:bb::1"), &wide), ip("2001:db8:aa::"));
    }

    #[test]
    fn a_head_blocked_by_its_own_per_ip_cap_lets_another_ip_through() {
        let a = ip("192.0.2.1");
        let limits = Limits { max_sessions: 2, max_per_ip: 1, ..Limits::default() };
        let d = world(1, SessionKind::Anonymous, a);
        let queue = [
            Candidate { kind: SessionKind::Anonymous, ip: Some(a) },
            Candidate { kind: SessionKind::Anonymous, ip: Some(ip("198.51.100.2")) },
        ];
        assert_eq!(first_admissible(&d, &limits, &queue), Some(1));
        let full = world(2, SessionKind::Anonymous, ip("203.0.113.9"));
        assert_eq!(first_admissible(&full, &limits, &queue), None, "no slot: nobody goes");
    }

    #[test]
    fn the_queue_holds_at_most_max_queued_per_ip_per_address() {
        let limits = Limits { max_queued_per_ip: 2, ..Limits::default() };
        let w = |s: &str| Candidate { kind: SessionKind::Anonymous, ip: Some(ip(s)) };
        let queue = [w("2001:db8::1"), w("2001:db8::2"), w("192.0.2.1")];
        assert!(!may_queue(&limits, &queue, Some(ip("2001:db8::3"))), "same /64");
        assert!(may_queue(&limits, &queue, Some(ip("192.0.2.1"))));
        assert!(may_queue(&limits, &queue, None));
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
