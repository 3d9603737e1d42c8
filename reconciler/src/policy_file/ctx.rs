//! The validation context: collects located errors, and parses optional settings with their defaults so that
//! a refused value is recorded and replaced by its default, and checking goes on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Location;

use super::PolicyError;
use super::raw::Text;
use super::units::{parse_bool, parse_count, parse_duration, parse_size};
use crate::ids::ProfileName;

/// Reads a file the policy refers to.
pub(crate) type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<String>;

/// Collected errors and where the file came from.
pub(crate) struct Ctx<'a> {
    origin: &'a str,
    read_file: ReadFile<'a>,
    pub(crate) errors: Vec<PolicyError>,
}

/// Where a setting was written, when it was.
pub(crate) fn loc(v: &Option<Text>) -> Option<&Location> {
    v.as_ref().map(|t| &t.referenced)
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(origin: &'a str, read_file: ReadFile<'a>) -> Self {
        Self { origin, read_file, errors: Vec::new() }
    }

    /// Reads a file the policy names; a relative path is relative to the directory of the policy file.
    pub(crate) fn read_relative(&self, file: &Path) -> (PathBuf, std::io::Result<String>) {
        let path = if file.is_absolute() {
            file.to_path_buf()
        } else {
            Path::new(self.origin).parent().unwrap_or(Path::new("")).join(file)
        };
        let read = (self.read_file)(&path);
        (path, read)
    }

    /// A path the policy names, resolved as [`Ctx::read_relative`] resolves one.
    pub(crate) fn resolve(&self, file: &Path) -> PathBuf {
        if file.is_absolute() {
            file.to_path_buf()
        } else {
            Path::new(self.origin).parent().unwrap_or(Path::new("")).join(file)
        }
    }

    /// Records an error about `path`, at `at` when known.
    pub(crate) fn error(&mut self, at: Option<&Location>, path: &str, reason: impl fmt::Display) {
        self.errors.push(PolicyError::at(self.origin, at, format!("{path}: {reason}")));
    }

    /// Records an error about the value `t` of `path`.
    pub(crate) fn bad(&mut self, t: &Text, path: &str, reason: impl fmt::Display) {
        self.error(Some(&t.referenced), path, reason);
    }

    /// Parses `v` when set, else returns `default`; a refused value is recorded and replaced by `default`.
    pub(crate) fn value<T>(
        &mut self,
        v: &Option<Text>,
        path: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let Some(t) = v else { return default };
        match parse(&t.value) {
            Ok(x) => x,
            Err(reason) => {
                self.bad(t, path, reason);
                default
            }
        }
    }

    /// An optional setting: `None` when unset or refused.
    pub(crate) fn optional<T>(
        &mut self,
        v: &Option<Text>,
        path: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        self.item(v.as_ref()?, path, parse)
    }

    /// One value, such as a list item: `None` when refused.
    pub(crate) fn item<T>(&mut self, t: &Text, path: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        match parse(&t.value) {
            Ok(x) => Some(x),
            Err(reason) => {
                self.bad(t, path, reason);
                None
            }
        }
    }

    /// Records an error about a key missing from the top of the file, located at its start.
    pub(crate) fn missing_at_start(&mut self, path: &str, reason: impl fmt::Display) {
        self.errors.push(PolicyError {
            origin: self.origin.to_owned(),
            line: 1,
            column: 1,
            message: format!("{path}: {reason}"),
        });
    }

    /// A duration of at least `min`.
    pub(crate) fn duration(&mut self, v: &Option<Text>, path: &str, default: Duration, min: Duration) -> Duration {
        self.value(v, path, default, |s| at_least(parse_duration(s)?, min))
    }

    /// A size in bytes within `min..=max`.
    pub(crate) fn size(&mut self, v: &Option<Text>, path: &str, default: u64, min: u64, max: u64) -> u64 {
        self.value(v, path, default, |s| {
            let n = parse_size(s)?;
            if (min..=max).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{} is out of range: use {} to {}", s.trim(), human_size(min), human_size(max)))
            }
        })
    }

    /// A whole number within `min..=max`.
    pub(crate) fn count(&mut self, v: &Option<Text>, path: &str, default: u64, min: u64, max: u64) -> u64 {
        self.value(v, path, default, |s| parse_count(s, min, max))
    }

    /// `true` or `false`.
    pub(crate) fn boolean(&mut self, v: &Option<Text>, path: &str, default: bool) -> bool {
        self.value(v, path, default, parse_bool)
    }

    /// A profile name.
    pub(crate) fn profile_name(&mut self, t: &Text, path: &str) -> Option<ProfileName> {
        match t.value.parse() {
            Ok(name) => Some(name),
            Err(e) => {
                self.bad(t, path, e);
                None
            }
        }
    }
}

/// Requires `d >= min`; a zero minimum accepts zero.
fn at_least(d: Duration, min: Duration) -> Result<Duration, String> {
    if d >= min {
        Ok(d)
    } else if min == MIN_POSITIVE {
        Err("must be longer than 0".into())
    } else {
        Err(format!("must be at least {}", human_duration(min)))
    }
}

/// The smallest duration accepted where zero is not.
pub(crate) const MIN_POSITIVE: Duration = Duration::from_millis(1);

/// `65536` as `64KiB`.
pub(crate) fn human_size(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// `90s` as `1m30s`.
pub(crate) fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0".into();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (per, unit) in [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")] {
        if rest >= per {
            out.push_str(&format!("{}{unit}", rest / per));
            rest %= per;
        }
    }
    out
}

/// Converts a count already bounded by its range check.
pub(crate) fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Converts a count already bounded by its range check.
pub(crate) fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
