//! The admission queue and the per-IP caps, on the in-memory fake engine: a waiter held back by its own per-IP
//! cap does not block the waiters behind it, each address has a bounded number of waiters, and IPv6 clients
//! count per network, not per address.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use berth::controller::{self, Admission, ControllerConfig, Handle, OpenError, SessionRequest, Ticket};
use berth::metrics::Metrics;
use berth::reconciler::{EndReason, Policy, SessionKind};
use berth::runtime::fake::FakeRuntime;
use tokio::sync::{oneshot, watch};

/// Far longer than any wait below: a waiter that is admitted at all is admitted because a slot freed.
const QUEUE_WAIT: Duration = Duration::from_secs(60);
const T: Duration = Duration::from_secs(5);

async fn start(p: Policy) -> Handle {
    let (tx, rx) = watch::channel(Arc::new(p));
    std::mem::forget(tx);
    let cfg = ControllerConfig { instance: "queue".parse().expect("valid"), epoch: 1, audit: None };
    let (handle, _terms, _task) = controller::spawn(FakeRuntime::default(), cfg, rx, Arc::new(Metrics::new()));
    let mut r = handle.readiness();
    tokio::time::timeout(T, r.wait_for(|r| r.is_ready())).await.expect("ready").expect("alive");
    handle
}

fn req(ip: &str) -> SessionRequest {
    SessionRequest {
        profile: None,
        kind: SessionKind::Anonymous,
        env: vec![],
        resume_hash: None,
        client_ip: Some(ip.parse::<IpAddr>().expect("ip")),
        id: None,
        identity: None,
        size: None,
    }
}

async fn admitted(h: &Handle, ip: &str) -> Ticket {
    match h.open(req(ip)).await {
        Ok(Admission::Admitted(t)) => t,
        Ok(Admission::Queued { .. }) => panic!("{ip} was queued, expected admitted"),
        Err(e) => panic!("{ip} was refused: {e}"),
    }
}

type Waiting = oneshot::Receiver<Result<Ticket, OpenError>>;

async fn queued(h: &Handle, ip: &str) -> Waiting {
    match h.open(req(ip)).await {
        Ok(Admission::Queued { result, .. }) => result,
        Ok(Admission::Admitted(_)) => panic!("{ip} was admitted, expected queued"),
        Err(e) => panic!("{ip} was refused: {e}"),
    }
}

fn policy(max_sessions: usize) -> Policy {
    let mut p = Policy::default();
    p.limits.max_sessions = max_sessions;
    p.limits.max_per_ip = 1;
    p.limits.queue_wait = QUEUE_WAIT;
    p
}

#[tokio::test]
async fn a_waiter_from_another_ip_is_admitted_past_a_head_blocked_by_its_own_per_ip_cap() {
    let h = start(policy(2)).await;
    let c = admitted(&h, "192.0.2.3").await;
    let d = admitted(&h, "192.0.2.4").await;
    let mut a1 = queued(&h, "198.51.100.1").await;
    let mut a2 = queued(&h, "198.51.100.1").await;
    let mut b = queued(&h, "203.0.113.2").await;

    h.release(c.id, EndReason::Released).await;
    let first = tokio::time::timeout(T, &mut a1).await.expect("a slot freed: the head goes in");
    assert!(matches!(first, Ok(Ok(_))), "{first:?}");

    // The head is now A's second waiter, held back by A's per-IP cap. B, behind it, gets the next free slot.
    h.release(d.id, EndReason::Released).await;
    let second = tokio::time::timeout(T, &mut b).await.expect("B is admitted as soon as the slot frees");
    assert!(matches!(second, Ok(Ok(_))), "{second:?}");
    assert!(a2.try_recv().is_err(), "A's second waiter still waits for its own cap");
}

#[tokio::test]
async fn each_address_has_at_most_max_queued_per_ip_waiters() {
    let mut p = policy(1);
    p.limits.max_queued_per_ip = 2;
    let h = start(p).await;
    let _full = admitted(&h, "192.0.2.3").await;
    let _w1 = queued(&h, "2001:db8:aa:bb::1").await;
    let _w2 = queued(&h, "2001:db8:aa:bb::2").await;
    match h.open(req("2001:db8:aa:bb::3")).await {
        Err(OpenError::Full { reason, .. }) => assert_eq!(reason, "per_ip"),
        Err(e) => panic!("expected per_ip, got {e}"),
        Ok(_) => panic!("a third waiter from the same /64 was accepted"),
    }
    let _other = queued(&h, "2001:db8:aa:cc::1").await;
}

#[tokio::test]
async fn ipv6_addresses_in_one_64_share_max_per_ip() {
    let h = start(policy(10)).await;
    let _first = admitted(&h, "2001:db8:aa:bb::1").await;
    match h.open(req("2001:db8:aa:bb::2")).await {
        Err(OpenError::Full { reason, .. }) => assert_eq!(reason, "per_ip"),
        Err(e) => panic!("expected per_ip, got {e}"),
        Ok(_) => panic!("a second session from the same /64 was admitted with max_per_ip: 1"),
    }
    let _elsewhere = admitted(&h, "2001:db8:aa:cc::1").await;
}
