//! A soak at moderate churn: sessions opened, used and released back to back for ten minutes (`BERTH_SOAK_SECS`,
//! default 600), while this process's resident memory is sampled. berth runs in the test process, so the samples
//! include the test's own clients; they churn too, so a leak on either side shows. The test is its own binary so
//! that nothing else runs in its process while it measures.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::World;
use common::client::ready;
use common::load::{echo, rss_bytes};
use serde_json::json;

const WORKERS: usize = 2;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The first and the last minute are compared; on a shorter local run, the first and last third.
const WINDOW: Duration = Duration::from_secs(60);
/// How far the last window's median RSS may be from the first window's.
const FLAT: f64 = 0.10;

/// One session's life: open, echo a few times, release, see the exit and the close.
async fn cycle(addr: SocketAddr, worker: usize, n: u64) {
    let mut c = ready(addr).await;
    for i in 0..3 {
        echo(&mut c, &format!("w{worker}x"), n * 10 + i, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("worker {worker}, cycle {n}: {e:?}"));
    }
    c.send_json(json!({"type": "release"})).await;
    let exit = c.until_json("exit", Duration::from_secs(20)).await;
    assert_eq!(exit["reason"], "released");
    let (code, _) = c.until_closed(Duration::from_secs(20)).await;
    assert_eq!(code, Some(4000));
}

/// The median of `v` (zero when empty).
fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_rss_stays_flat() {
    let total = Duration::from_secs(
        std::env::var("BERTH_SOAK_SECS").ok().and_then(|s| s.parse().ok()).filter(|s| *s >= 15).unwrap_or(600),
    );
    let window = WINDOW.min(total / 3);
    common::docker().await;
    let w = World::with_prefix("k");
    let mut p = w.policy.clone();
    p.limits.connections_per_minute = 100_000;
    p.limits.connection_burst = 1000;
    let server = w.serve_with(p).await;
    let addr = server.addr;
    eprintln!("soak: {total:?} at {WORKERS} sessions back to back, RSS every {SAMPLE_EVERY:?}, windows of {window:?}");

    let started = Instant::now();
    let until = started + total;
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < until {
                    cycle(addr, worker, n).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    while Instant::now() < until {
        tick.tick().await;
        samples.push((started.elapsed(), rss_bytes()));
        assert!(workers.iter().all(|w| !w.is_finished()) || Instant::now() >= until, "a worker failed");
    }
    let mut cycles = 0;
    for w in workers {
        cycles += w.await.expect("the worker did not panic");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{cycles} sessions opened, echoed and released in {elapsed:?} ({:.1}/s)",
        cycles as f64 / elapsed.as_secs_f64()
    );
    let series: Vec<String> = samples.iter().map(|(t, b)| format!("{}s:{:.1}", t.as_secs(), mib(*b))).collect();
    eprintln!("RSS (MiB) over time: {}", series.join(" "));

    let first: Vec<u64> = samples.iter().filter(|(t, _)| *t <= window).map(|(_, b)| *b).collect();
    let last: Vec<u64> = samples.iter().filter(|(t, _)| *t + window >= total).map(|(_, b)| *b).collect();
    let (a, b) = (median(&first), median(&last));
    let change = (b as f64 - a as f64) / a as f64;
    eprintln!(
        "median RSS: first {window:?} {:.1} MiB ({} samples), last {window:?} {:.1} MiB ({} samples): {:+.1}%",
        mib(a),
        first.len(),
        mib(b),
        last.len(),
        change * 100.0
    );
    assert!(first.len() >= 3 && last.len() >= 3, "too few samples");
    assert!(change.abs() <= FLAT, "RSS moved {:+.1}% from the first window to the last", change * 100.0);

    // Nothing is left: no session, no container, no terminal.
    let start = Instant::now();
    while !server.handle.list().await.is_empty() || !w.containers(None).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "sessions or containers left after the soak");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.terminals.is_empty(), "no terminal kept for a gone session");
    server.stop().await;
}
