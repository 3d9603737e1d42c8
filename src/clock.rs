//! berth's one clock. Timers use tokio's monotonic [`Instant`]; wall-clock [`Timestamp`]s (container labels, the
//! deadlines the planner computes, a terminal's last activity) come from the same source: the wall time when the
//! clock was first read, plus the tokio time elapsed since. On tokio's paused clock (`start_paused` tests) both
//! move together, so an idle timeout, a resume grace or a lease runs out in virtual time, in milliseconds, and
//! cannot flake. In production the wall time then follows the monotonic clock: a step of the system clock
//! while berth runs does not move its deadlines.

use std::sync::OnceLock;

use berth_reconciler::Timestamp;
use tokio::time::Instant;

/// The wall time and the tokio instant of the clock's first reading.
static ANCHOR: OnceLock<(Timestamp, Instant)> = OnceLock::new();

/// The current wall-clock time, on tokio's clock.
pub fn now() -> Timestamp {
    #[allow(clippy::disallowed_methods)] // the anchor is the one place that reads the system clock
    let &(wall, at) = ANCHOR.get_or_init(|| (Timestamp::now(), Instant::now()));
    let now = Instant::now();
    // Each test runtime has its own paused clock, whose instants may sit a little before the anchor another
    // runtime took: count backwards then rather than stand still.
    match now.checked_duration_since(at) {
        Some(ahead) => wall.add(ahead),
        None => wall.sub(at.saturating_duration_since(now)),
    }
}

/// Seconds since the Unix epoch, for JWT expiry checks.
pub fn unix_secs() -> u64 {
    now().as_millis() / 1000
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wall_time_moves_with_paused_tokio_time() {
        let before = now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let after = now();
        assert_eq!(after.since(before), Duration::from_secs(3600));
    }

    #[test]
    fn wall_time_is_close_to_the_system_clock_outside_a_runtime() {
        #[allow(clippy::disallowed_methods)]
        let system = Timestamp::now();
        let ours = now();
        let skew = if ours > system { ours.since(system) } else { system.since(ours) };
        assert!(skew < Duration::from_secs(5), "{ours:?} vs {system:?}");
    }
}
