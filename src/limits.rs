//! The network edge's checks before any session work: which address a connection comes from (believing
//! `X-Forwarded-For` only from trusted proxies), whether its `Origin` may open a WebSocket, and a per-address
//! connection rate limit whose memory is bounded whatever clients send.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use berth_reconciler::admission::ip_key;
use berth_reconciler::policy::Limits;
use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

/// Longest `X-Forwarded-For` value read, in bytes. A longer one is ignored entirely.
pub const MAX_FORWARDED_FOR_BYTES: usize = 4096;

/// Whether `ip` lies in any trusted network, in its canonical form or (for IPv4) its IPv4-mapped IPv6 form.
fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let mapped = match ip {
        IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        IpAddr::V6(_) => None,
    };
    trusted.iter().any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
}

/// The client's address.
///
/// When the TCP peer is not inside a trusted network, it is the client, and `X-Forwarded-For` is ignored: anyone
/// can send that header. When the peer is a trusted proxy, the header is walked from the right (the entry the
/// proxy appended) and the first address that is not itself a trusted proxy is the client. An entry that is not
/// a bare IP address (garbage, a port, brackets, an empty entry) stops the walk, and the last address read (a
/// trusted proxy) is used, or the peer when none was read; a header longer than [`MAX_FORWARDED_FOR_BYTES`] is
/// ignored. There are no loopback exemptions. IPv4-mapped IPv6 addresses come back as IPv4.
///
/// When a request carries several `X-Forwarded-For` headers, pass them joined with `,` in the order received.
pub fn client_ip(peer: SocketAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = peer.ip().to_canonical();
    if !is_trusted(peer_ip, trusted) {
        return peer_ip;
    }
    let Some(header) = forwarded_for.filter(|h| h.len() <= MAX_FORWARDED_FOR_BYTES) else {
        return peer_ip;
    };
    let mut last_good = peer_ip;
    for entry in header.rsplit(',') {
        let Ok(ip) = entry.trim_matches([' ', '\t']).parse::<IpAddr>() else {
            break;
        };
        let ip = ip.to_canonical();
        if !is_trusted(ip, trusted) {
            return ip;
        }
        last_good = ip;
    }
    last_good
}

/// [`client_ip`] for a request's `X-Forwarded-For` header lines, in the order received: repeated lines combine
/// into one list (RFC 9110 §5.3), so that the line a proxy appended (HAProxy's `option forwardfor` adds one) is
/// the right-most part, and a line the client sent itself cannot choose its address.
pub fn client_ip_from_lines(peer: SocketAddr, lines: &[&str], trusted: &[IpNet]) -> IpAddr {
    let joined = lines.join(",");
    client_ip(peer, (!lines.is_empty()).then_some(joined.as_str()), trusted)
}

/// An origin or a `Host` authority split into lowercase parts, with the scheme's default port dropped.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (IPv6 in brackets). `None` when it is not a plain authority.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    if authority.is_empty() || authority.bytes().any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\') || b <= b' ') {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (&authority[..v6.len() + 2], port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
        Some(_) => return None,
    };
    Some((host.to_ascii_lowercase(), port))
}

fn parse_origin(origin: &str) -> Option<Origin> {
    let (scheme, authority) = origin.split_once("://")?;
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let (host, port) = split_authority(authority)?;
    let port = port.filter(|p| Some(*p) != default_port(&scheme));
    Some(Origin { scheme, host, port })
}

/// Whether a WebSocket upgrade with this `Origin` may proceed.
///
/// - No `Origin` header passes. `Origin` protects browsers' users from pages on other sites (cross-site
///   WebSocket hijacking); browsers always send it on WebSocket upgrades, and a non-browser client could send
///   any value anyway, so its absence proves nothing either way and authentication does the rest.
/// - `*` in `allowed` lets every origin through.
/// - Empty `allowed` means same host: the origin's `host[:port]` must equal the `Host` header (case-insensitive,
///   default ports ignored). Without a `Host`, a browser origin is refused.
/// - Otherwise the origin must equal one entry (`https://example.com`), case-insensitive, default ports ignored.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin.map(str::trim) else {
        return true;
    };
    if allowed.iter().any(|a| a.trim() == "*") {
        return true;
    }
    let parsed = parse_origin(origin);
    if allowed.is_empty() {
        let (Some(o), Some((host, port))) = (parsed, host.and_then(|h| split_authority(h.trim()))) else {
            return false;
        };
        let port = port.filter(|p| Some(*p) != default_port(&o.scheme));
        return o.host == host && o.port == port;
    }
    allowed.iter().any(|entry| {
        let entry = entry.trim().trim_end_matches('/');
        match (&parsed, parse_origin(entry)) {
            (Some(o), Some(e)) => *o == e,
            // Values that are not scheme://authority (such as `null`) only match literally.
            _ => entry.eq_ignore_ascii_case(origin),
        }
    })
}

/// Rate limit state per key (the GCRA's theoretical arrival time), with a hard cap on the number of keys.
///
/// When a new key arrives and the store is full, the eighth of the keys with the earliest arrival times are
/// dropped first. Those are the keys closest to a full budget (all idle ones first), so dropping them loses the
/// least: a key that is being throttled has the latest arrival time and is the last to go, so a flood of new
/// addresses cannot buy a throttled one a fresh budget. Dropping in batches keeps the cost amortised.
#[derive(Clone)]
struct BoundedStore(Arc<StoreInner>);

struct StoreInner {
    map: Mutex<HashMap<IpAddr, Nanos>>,
    cap: AtomicUsize,
}

impl BoundedStore {
    fn new(cap: usize) -> Self {
        Self(Arc::new(StoreInner { map: Mutex::new(HashMap::new()), cap: AtomicUsize::new(cap.max(1)) }))
    }

    fn map(&self) -> MutexGuard<'_, HashMap<IpAddr, Nanos>> {
        // The map is consistent after every statement, so a panic elsewhere cannot leave it half-written.
        self.0.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cap(&self) -> usize {
        self.0.cap.load(Ordering::Relaxed)
    }

    fn set_cap(&self, cap: usize) {
        self.0.cap.store(cap.max(1), Ordering::Relaxed);
        let mut map = self.map();
        let excess = map.len().saturating_sub(self.cap());
        drop_earliest(&mut map, excess);
    }
}

/// Drops at least `count` entries, those with the earliest arrival times.
fn drop_earliest(map: &mut HashMap<IpAddr, Nanos>, count: usize) {
    if count == 0 {
        return;
    }
    if count >= map.len() {
        map.clear();
        return;
    }
    let mut tats: Vec<Nanos> = map.values().copied().collect();
    let (_, threshold, _) = tats.select_nth_unstable(count - 1);
    let threshold = *threshold;
    map.retain(|_, tat| *tat > threshold);
}

impl fmt::Debug for BoundedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedStore").field("len", &self.map().len()).field("cap", &self.cap()).finish()
    }
}

impl StateStore for BoundedStore {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.map();
        let previous = map.get(key).copied();
        let (outcome, tat) = f(previous)?;
        if previous.is_none() {
            let cap = self.cap();
            let len = map.len();
            if len >= cap {
                drop_earliest(&mut map, len + 1 - cap + cap / 8);
            }
        }
        map.insert(*key, tat);
        Ok(outcome)
    }
}

impl ShrinkableKeyedStateStore<IpAddr> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.map().retain(|_, tat| *tat > drop_below);
    }

    fn shrink_to_fit(&self) {
        self.map().shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map().len()
    }

    fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

type Limiter = RateLimiter<IpAddr, BoundedStore, DefaultClock>;

/// One quota and its state.
struct Generation {
    limiter: Limiter,
    store: BoundedStore,
    per_minute: u32,
    burst: u32,
    /// The prefixes that group addresses into keys, and the networks not counted.
    grouping: Limits,
}

impl Generation {
    fn new(limits: &Limits) -> Self {
        let per_minute = NonZeroU32::new(limits.connections_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.connection_burst).unwrap_or(NonZeroU32::MIN);
        let store = BoundedStore::new(limits.tracked_ips);
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        let limiter = RateLimiter::new(quota, store.clone(), DefaultClock::default());
        let grouping = Limits {
            ipv4_prefix: limits.ipv4_prefix,
            ipv6_prefix: limits.ipv6_prefix,
            rate_exempt: limits.rate_exempt.clone(),
            ..Limits::default()
        };
        Self { limiter, store, per_minute: per_minute.get(), burst: burst.get(), grouping }
    }
}

/// New connections per client address: `limits.connections_per_minute` with bursts of `limits.connection_burst`,
/// over at most `limits.tracked_ips` addresses, each grouped by `limits.ipv4_prefix` or `limits.ipv6_prefix`
/// (see [`ip_key`]). Clients in `limits.rate_exempt` are not counted.
///
/// Memory is bounded at insertion: the state never holds more than `tracked_ips` keys. When a new address
/// arrives at the cap, the eighth of addresses closest to a full budget are forgotten (idle ones first); a
/// forgotten address simply starts again with a full budget. [`evict`](Self::evict) drops idle addresses and
/// returns memory; call it periodically. [`reconfigure`](Self::reconfigure) follows a policy reload in place.
pub struct ConnectionLimiter {
    current: RwLock<Generation>,
}

impl ConnectionLimiter {
    /// A limiter for `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self { current: RwLock::new(Generation::new(limits)) }
    }

    /// Counts one new connection from `ip`.
    ///
    /// # Errors
    /// When `ip` is over its rate: the time until it may connect again.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        if is_trusted(ip.to_canonical(), &current.grouping.rate_exempt) {
            return Ok(());
        }
        current.limiter.check_key(&ip_key(ip, &current.grouping)).map_err(|not_until| {
            let now = current.limiter.clock().now();
            not_until.wait_time_from(now)
        })
    }

    /// Forgets addresses whose budget is full again (they would start fresh anyway), and returns memory.
    pub fn evict(&self) {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.limiter.retain_recent();
        current.limiter.shrink_to_fit();
    }

    /// Follows a policy change. A new `tracked_ips` or `rate_exempt` applies in place (forgetting addresses over
    /// a lower cap); a new rate, burst or prefix starts over with an empty state, so every address gets a fresh
    /// budget once.
    pub fn reconfigure(&self, limits: &Limits) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.per_minute == limits.connections_per_minute.max(1)
            && current.burst == limits.connection_burst.max(1)
            && (current.grouping.ipv4_prefix, current.grouping.ipv6_prefix) == (limits.ipv4_prefix, limits.ipv6_prefix)
        {
            current.grouping.rate_exempt.clone_from(&limits.rate_exempt);
            current.store.set_cap(limits.tracked_ips);
        } else {
            *current = Generation::new(limits);
        }
    }

    /// How many addresses are tracked.
    pub fn len(&self) -> usize {
        self.current.read().unwrap_or_else(PoisonError::into_inner).limiter.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for ConnectionLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("ConnectionLimiter")
            .field("per_minute", &current.per_minute)
            .field("burst", &current.burst)
            .field("store", &current.store)
            .finish()
    }
}

#[cfg(test)]
mod tests;
