//! When a connection warns its client that the session is about to end for inactivity: at the exact moment the
//! warning is due (`idle_timeout - idle_warning` after the last activity), not at the next tick of a timer.

use std::time::Duration;

use berth_reconciler::Timestamp;

/// What the connection does next about idleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IdleCheck {
    /// Warn now: the session ends in this many seconds (rounded up) unless there is activity.
    Warn(u64),
    /// Look again after this long.
    Sleep(Duration),
}

/// Decides, from the last activity and the time now, whether to warn or how long to wait. `warned` is the
/// activity time already warned about: one warning per quiet spell. A zero `warning` means no warning.
pub(super) fn idle_check(
    last: Timestamp,
    now: Timestamp,
    timeout: Duration,
    warning: Duration,
    warned: Option<Timestamp>,
) -> IdleCheck {
    let left = last.add(timeout).since(now);
    if warning.is_zero() {
        return IdleCheck::Sleep(timeout.max(Duration::from_secs(1)));
    }
    if warned == Some(last) {
        // Already warned about this quiet spell: new activity cannot make the next warning due sooner than this.
        return IdleCheck::Sleep(timeout.saturating_sub(warning).max(Duration::from_millis(100)));
    }
    if left <= warning {
        let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        return IdleCheck::Warn(ms.div_ceil(1000));
    }
    IdleCheck::Sleep(left - warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_warning_is_due_exactly_when_the_warning_time_is_left_and_says_so() {
        let last = Timestamp::from_secs(1_000);
        let check = |now_ms: u64, warned| idle_check(last, Timestamp::from_millis(now_ms), S(6), S(3), warned);
        assert_eq!(check(1_000_000, None), IdleCheck::Sleep(S(3)));
        assert_eq!(check(1_002_250, None), IdleCheck::Sleep(Duration::from_millis(750)));
        assert_eq!(check(1_003_000, None), IdleCheck::Warn(3));
        assert_eq!(check(1_003_004, None), IdleCheck::Warn(3), "a few ms late still says 3 s");
        assert_eq!(check(1_003_004, Some(last)), IdleCheck::Sleep(S(3)), "once per quiet spell");
    }

    #[test]
    fn a_zero_warning_time_never_warns() {
        let last = Timestamp::from_secs(1_000);
        for now in [1_000, 1_005, 1_006, 1_100] {
            let check = idle_check(last, Timestamp::from_secs(now), S(6), Duration::ZERO, None);
            assert!(matches!(check, IdleCheck::Sleep(_)), "at {now}: {check:?}");
        }
    }
}
