//! Tests for client addresses, origins and the connection rate limit.

use std::net::{Ipv4Addr, SocketAddr};

use super::*;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().expect("network")).collect()
}

fn peer(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), 40_000)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

// --- client_ip ---

#[test]
fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
    let trusted = nets(&["10.0.0.0/8"]);
    assert_eq!(client_ip(peer("203.0.113.7"), Some("198.51.100.1"), &trusted), ip("203.0.113.7"));
    assert_eq!(client_ip(peer("203.0.113.7"), None, &trusted), ip("203.0.113.7"));
    assert_eq!(client_ip(peer("203.0.113.7"), Some("198.51.100.1"), &[]), ip("203.0.113.7"));
}

#[test]
fn loopback_peers_get_no_exemption() {
    assert_eq!(client_ip(peer("127.0.0.1"), Some("198.51.100.1"), &[]), ip("127.0.0.1"));
    assert_eq!(client_ip(peer("::1"), Some("198.51.100.1"), &[]), ip("::1"));
}

#[test]
fn a_trusted_peer_forwards_the_right_most_untrusted_address() {
    let trusted = nets(&["10.0.0.0/8"]);
    assert_eq!(client_ip(peer("10.0.0.1"), Some("198.51.100.1"), &trusted), ip("198.51.100.1"));
    assert_eq!(
        client_ip(peer("10.0.0.1"), Some("1.2.3.4, 198.51.100.1"), &trusted),
        ip("198.51.100.1"),
        "the left-most entry is whatever the client sent"
    );
    assert_eq!(client_ip(peer("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
    assert_eq!(client_ip(peer("10.0.0.1"), Some(""), &trusted), ip("10.0.0.1"));
}

#[test]
fn a_chain_of_trusted_proxies_is_walked_from_the_right() {
    let trusted = nets(&["10.0.0.0/8", "192.168.1.5/32"]);
    let xff = "6.6.6.6, 198.51.100.1, 192.168.1.5,10.1.2.3";
    assert_eq!(client_ip(peer("10.0.0.1"), Some(xff), &trusted), ip("198.51.100.1"));
    assert_eq!(
        client_ip(peer("10.0.0.1"), Some("10.9.9.9, 192.168.1.5"), &trusted),
        ip("10.9.9.9"),
        "when every hop is a proxy, the left-most one"
    );
}

#[test]
fn a_malformed_entry_stops_the_walk_at_the_last_good_hop() {
    let trusted = nets(&["10.0.0.0/8"]);
    let cases = [
        ("garbage", "10.0.0.1"),
        ("198.51.100.1, garbage", "10.0.0.1"),
        ("198.51.100.1:8080", "10.0.0.1"),
        ("[2001:db8::1]", "10.0.0.1"),
        ("[2001:db8::1]:443", "10.0.0.1"),
        ("fe80::1%eth0", "10.0.0.1"),
        ("198.51.100.1, garbage, 10.2.2.2", "10.2.2.2"),
        ("198.51.100.1,,10.2.2.2", "10.2.2.2"),
        ("unknown, 10.2.2.2, 10.3.3.3", "10.2.2.2"),
        ("999.1.1.1", "10.0.0.1"),
    ];
    for (xff, want) in cases {
        assert_eq!(client_ip(peer("10.0.0.1"), Some(xff), &trusted), ip(want), "{xff:?}");
    }
}

#[test]
fn an_overlong_forwarded_for_header_is_ignored() {
    let trusted = nets(&["10.0.0.0/8"]);
    let long = format!("{}198.51.100.1", "10.0.0.2, ".repeat(500));
    assert!(long.len() > MAX_FORWARDED_FOR_BYTES);
    assert_eq!(client_ip(peer("10.0.0.1"), Some(&long), &trusted), ip("10.0.0.1"));
}

#[test]
fn ipv6_addresses_are_handled_and_mapped_ipv4_becomes_ipv4() {
    let trusted = nets(&["fd00::/8", "10.0.0.0/8"]);
    assert_eq!(client_ip(peer("fd00::1"), Some("2001:db8::7"), &trusted), ip("2001:db8::7"));
    assert_eq!(client_ip(peer("fd00::1"), Some("2001:db8::7, fd00::2"), &trusted), ip("2001:db8::7"));
    assert_eq!(client_ip(peer("fd00::1"), Some("::ffff:198.51.100.1"), &trusted), ip("198.51.100.1"));
    assert_eq!(client_ip(peer("::ffff:10.0.0.1"), Some("198.51.100.1"), &trusted), ip("198.51.100.1"));
    assert_eq!(client_ip(peer("::ffff:203.0.113.9"), Some("198.51.100.1"), &trusted), ip("203.0.113.9"));
    assert_eq!(client_ip(peer("2001:db8::9"), Some("198.51.100.1"), &trusted), ip("2001:db8::9"));
}

// --- origin_allowed ---

fn list(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn a_missing_origin_passes() {
    assert!(origin_allowed(None, Some("berth.example"), &[]));
    assert!(origin_allowed(None, None, &list(&["https://app.example"])));
}

#[test]
fn with_no_allowed_origins_only_the_same_host_passes() {
    assert!(origin_allowed(Some("https://berth.example"), Some("berth.example"), &[]));
    assert!(origin_allowed(Some("https://Berth.Example"), Some("berth.EXAMPLE"), &[]));
    assert!(origin_allowed(Some("http://localhost:8080"), Some("localhost:8080"), &[]));
    assert!(origin_allowed(Some("https://berth.example"), Some("berth.example:443"), &[]));
    assert!(origin_allowed(Some("http://[::1]:8080"), Some("[::1]:8080"), &[]));
    assert!(!origin_allowed(Some("http://localhost:8081"), Some("localhost:8080"), &[]));
    assert!(!origin_allowed(Some("https://evil.example"), Some("berth.example"), &[]));
    assert!(!origin_allowed(Some("https://berth.example.evil.example"), Some("berth.example"), &[]));
    assert!(!origin_allowed(Some("https://berth.example@evil.example"), Some("berth.example"), &[]));
    assert!(!origin_allowed(Some("null"), Some("berth.example"), &[]));
    assert!(!origin_allowed(Some("https://berth.example"), None, &[]));
    assert!(!origin_allowed(Some("garbage"), Some("garbage"), &[]));
}

#[test]
fn listed_origins_are_compared_case_insensitively() {
    let allowed = list(&["https://app.example", "http://localhost:3000"]);
    assert!(origin_allowed(Some("https://APP.example"), Some("berth.example"), &allowed));
    assert!(origin_allowed(Some("https://app.example:443"), Some("berth.example"), &allowed));
    assert!(origin_allowed(Some("http://localhost:3000"), None, &allowed));
    assert!(!origin_allowed(Some("http://app.example"), Some("berth.example"), &allowed), "scheme matters");
    assert!(!origin_allowed(Some("https://app.example:8443"), Some("berth.example"), &allowed));
    assert!(
        !origin_allowed(Some("https://berth.example"), Some("berth.example"), &allowed),
        "a list replaces the same-host rule"
    );
}

#[test]
fn a_star_allows_any_origin() {
    assert!(origin_allowed(Some("https://anything.example"), None, &list(&["*"])));
}

// --- ConnectionLimiter ---

fn limits(per_minute: u32, burst: u32, tracked_ips: usize) -> Limits {
    Limits { connections_per_minute: per_minute, connection_burst: burst, tracked_ips, ..Limits::default() }
}

fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n))
}

#[test]
fn connections_over_the_burst_are_refused_with_a_retry_after() {
    let limiter = ConnectionLimiter::new(&limits(60, 3, 100));
    let a = ip("198.51.100.1");
    for _ in 0..3 {
        assert_eq!(limiter.check(a), Ok(()));
    }
    let retry = limiter.check(a).expect_err("over the burst");
    assert!(retry > Duration::ZERO && retry <= Duration::from_secs(1), "{retry:?}");
    assert_eq!(limiter.check(ip("198.51.100.2")), Ok(()), "other addresses have their own budget");
}

#[test]
fn ipv6_addresses_share_a_budget_per_64() {
    let limiter = ConnectionLimiter::new(&limits(60, 2, 100));
    assert_eq!(limiter.check(ip("2001:db8:1:2::1")), Ok(()));
    assert_eq!(limiter.check(ip("2001:db8:1:2:ffff::9")), Ok(()));
    assert!(limiter.check(ip("2001:db8:1:2::3")).is_err());
    assert_eq!(limiter.check(ip("2001:db8:1:3::1")), Ok(()));
    assert_eq!(limiter.len(), 2);
}

#[test]
fn tracked_addresses_stay_bounded_and_a_throttled_address_stays_throttled() {
    let limiter = ConnectionLimiter::new(&limits(10, 5, 1000));
    let throttled = ip("203.0.113.66");
    while limiter.check(throttled).is_ok() {}
    for n in 0..10_000 {
        assert_eq!(limiter.check(v4(n)), Ok(()));
        assert!(limiter.len() <= 1000, "{} tracked after {n}", limiter.len());
    }
    assert!(limiter.check(throttled).is_err(), "a flood of new addresses does not reset a throttled one");
    limiter.evict();
    assert!(limiter.len() <= 1000);
}

#[test]
fn reconfiguring_the_cap_applies_in_place_and_a_new_rate_starts_fresh() {
    let limiter = ConnectionLimiter::new(&limits(60, 1, 1000));
    let a = ip("198.51.100.1");
    for n in 0..500 {
        assert_eq!(limiter.check(v4(n)), Ok(()));
    }
    assert_eq!(limiter.check(a), Ok(()), "the latest arrival is the last to be forgotten");
    limiter.reconfigure(&limits(60, 1, 100));
    assert!(limiter.len() <= 100);
    assert!(limiter.check(a).is_err(), "same rate: the state is kept");
    limiter.reconfigure(&limits(120, 1, 100));
    assert!(limiter.is_empty());
    assert_eq!(limiter.check(a), Ok(()));
}

#[test]
fn the_default_limits_never_refuse_this_machine_but_count_everyone_else() {
    let limiter = ConnectionLimiter::new(&Limits::default());
    for _ in 0..200 {
        assert_eq!(limiter.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(limiter.check(ip("::1")), Ok(()));
        assert_eq!(limiter.check(ip("::ffff:127.0.0.1")), Ok(()));
    }
    let other = ip("198.51.100.1");
    let allowed = (0..200).take_while(|_| limiter.check(other).is_ok()).count();
    assert_eq!(allowed, Limits::default().connection_burst as usize);
}

#[test]
fn an_empty_rate_exempt_counts_loopback_like_any_address() {
    let strict = Limits { rate_exempt: vec![], ..limits(60, 2, 100) };
    let limiter = ConnectionLimiter::new(&limits(60, 2, 100));
    for _ in 0..5 {
        assert_eq!(limiter.check(ip("127.0.0.1")), Ok(()));
    }
    limiter.reconfigure(&strict);
    assert_eq!(limiter.check(ip("127.0.0.1")), Ok(()));
    assert_eq!(limiter.check(ip("127.0.0.1")), Ok(()));
    assert!(limiter.check(ip("127.0.0.1")).is_err(), "a reload to [] applies at once");
}

#[test]
fn the_ipv6_prefix_sets_what_shares_a_budget() {
    let exact = Limits { ipv6_prefix: 128, ..limits(60, 1, 100) };
    let limiter = ConnectionLimiter::new(&exact);
    assert_eq!(limiter.check(ip("2001:db8:1:2::1")), Ok(()));
    assert_eq!(limiter.check(ip("2001:db8:1:2::2")), Ok(()));
    let wide = Limits { ipv6_prefix: 48, ..limits(60, 1, 100) };
    limiter.reconfigure(&wide);
    assert_eq!(limiter.check(ip("2001:db8:1:2::1")), Ok(()));
    assert!(limiter.check(ip("2001:db8:1:3::1")).is_err(), "same /48");
}

#[test]
fn several_forwarded_for_lines_combine_in_order_and_the_appended_one_wins() {
    let trusted = nets(&["10.0.0.0/8"]);
    let from = |lines: &[&str]| client_ip_from_lines(peer("10.0.0.1"), lines, &trusted);
    // The client sent the first line itself; the proxy appended the second.
    assert_eq!(from(&["203.0.113.66", "198.51.100.30"]), ip("198.51.100.30"));
    assert_eq!(from(&["203.0.113.66", "198.51.100.30, 10.0.0.2"]), ip("198.51.100.30"));
    assert_eq!(from(&["203.0.113.66, 198.51.100.30"]), ip("198.51.100.30"));
    assert_eq!(from(&[]), ip("10.0.0.1"));
    assert_eq!(client_ip_from_lines(peer("203.0.113.7"), &["1.2.3.4", "5.6.7.8"], &trusted), ip("203.0.113.7"));
}
