//! The retry and give-up rule for failed engine calls: a function of the kind of failure and the attempt, so it
//! is tested on its own, in a table.

use std::time::Duration;

/// What kind of failure an engine call had, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// May succeed if tried again (a timeout, a conflict, a busy engine).
    Transient,
    /// The engine could not be reached at all: retried, but slowly from the start, so a restarting engine is not
    /// hammered.
    Unreachable,
    /// Will fail the same way again (no such image, an invalid request).
    Permanent,
}

/// The delay before retrying after the `attempt`-th consecutive failure (1-based): `base` doubling per attempt,
/// capped at `max`; an unreachable engine gets at least four times `base` at once.
pub fn retry_delay(failure: Failure, attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1).min(20)).unwrap_or(u32::MAX));
    let delay = exp.min(max);
    match failure {
        Failure::Unreachable => delay.max(base.saturating_mul(4)).min(max),
        Failure::Transient | Failure::Permanent => delay,
    }
}

/// Whether a session's create is given up after `attempts` failures, the last of them `failure`: at once for a
/// permanent failure, else after `max_attempts`.
pub fn gives_up(failure: Failure, attempts: u32, max_attempts: u32) -> bool {
    failure == Failure::Permanent || attempts >= max_attempts
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_delay_doubles_from_the_base_and_stops_at_the_cap() {
        // (failure, attempt, base, max, expected)
        let table = [
            (Failure::Transient, 1, MS(100), MS(2000), MS(100)),
            (Failure::Transient, 2, MS(100), MS(2000), MS(200)),
            (Failure::Transient, 4, MS(100), MS(2000), MS(800)),
            (Failure::Transient, 5, MS(100), MS(2000), MS(1600)),
            (Failure::Transient, 6, MS(100), MS(2000), MS(2000)),
            (Failure::Transient, 7, MS(100), MS(2000), MS(2000)),
            (Failure::Transient, u32::MAX, MS(100), MS(2000), MS(2000)),
            (Failure::Transient, 0, MS(100), MS(2000), MS(100)),
            (Failure::Permanent, 3, MS(100), MS(2000), MS(400)),
            (Failure::Unreachable, 1, MS(100), MS(30_000), MS(400)),
            (Failure::Unreachable, 3, MS(100), MS(30_000), MS(400)),
            (Failure::Unreachable, 4, MS(100), MS(30_000), MS(800)),
            (Failure::Unreachable, 40, MS(100), MS(30_000), MS(30_000)),
            (Failure::Unreachable, 1, MS(100), MS(250), MS(250)),
        ];
        for (failure, attempt, base, max, expected) in table {
            assert_eq!(retry_delay(failure, attempt, base, max), expected, "{failure:?} attempt {attempt}");
        }
    }

    #[test]
    fn a_permanent_failure_gives_up_at_once_and_others_at_the_limit() {
        // (failure, attempts, max_attempts, gives up)
        let table = [
            (Failure::Permanent, 1, 5, true),
            (Failure::Transient, 1, 5, false),
            (Failure::Transient, 4, 5, false),
            (Failure::Transient, 5, 5, true),
            (Failure::Unreachable, 4, 5, false),
            (Failure::Unreachable, 5, 5, true),
            (Failure::Transient, 1, 1, true),
        ];
        for (failure, attempts, max, expected) in table {
            assert_eq!(gives_up(failure, attempts, max), expected, "{failure:?} after {attempts} of {max}");
        }
    }
}
