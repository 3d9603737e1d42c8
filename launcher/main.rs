//! berth-launch: the main process of a warm-pool container (decision 0025).
//!
//! berth mounts this binary read-only into a pooled container and runs it as the entrypoint, with the profile's
//! command as its arguments. It turns the terminal's echo and line editing off, announces that it waits, reads
//! exactly one line of settings from its stdin (which only berth's attach stream can write to), restores the
//! terminal, sets the session's environment and execs the command. Nothing of the line is ever echoed.
//!
//! The line is `berth1` followed by ` e:<hex of NAME=value>` per variable, ended by `\n`. Anything else, an
//! over-long line or end of input makes the launcher exit with status 120 without running the command, so a
//! container whose settings did not arrive whole never runs a shell.
//!
//! Statically linked and free of dependencies (build.rs compiles it with `-C target-feature=+crt-static`), it
//! runs in any image, `FROM scratch` included. The only unsafe code is the two termios calls.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

/// Printed once the terminal no longer echoes: berth writes the settings only after it has seen this. An OSC
/// sequence, which terminals ignore, then a newline: the engine's log keeps a line only once it ends, and a
/// restarted berth finds the announcement in that log.
const READY: &[u8] = b"\x1b]berth;launcher-waiting\x07\n";
/// The first word of a settings line.
const VERSION: &str = "berth1";
/// The longest settings line read.
const MAX_LINE: usize = 256 * 1024;
/// The exit status when no valid settings arrived.
const NO_SETTINGS: u8 = 120;

/// glibc's `struct termios` on Linux.
#[repr(C)]
#[derive(Clone, Copy)]
struct Termios {
    c_iflag: u32,
    c_oflag: u32,
    c_cflag: u32,
    c_lflag: u32,
    c_line: u8,
    c_cc: [u8; 32],
    c_ispeed: u32,
    c_ospeed: u32,
}

unsafe extern "C" {
    fn tcgetattr(fd: i32, t: *mut Termios) -> i32;
    fn tcsetattr(fd: i32, when: i32, t: *const Termios) -> i32;
}

const ICANON: u32 = 0o2;
const ECHO: u32 = 0o10;
const ECHONL: u32 = 0o100;
const VTIME: usize = 5;
const VMIN: usize = 6;
const TCSANOW: i32 = 0;

/// Turns echo and line editing off on stdin when it is a terminal; returns the settings to restore.
fn quiet_terminal() -> Option<Termios> {
    let mut t = Termios { c_iflag: 0, c_oflag: 0, c_cflag: 0, c_lflag: 0, c_line: 0, c_cc: [0; 32], c_ispeed: 0, c_ospeed: 0 };
    // SAFETY: `t` is a valid, writable termios of the C library's layout; fd 0 is ours.
    if unsafe { tcgetattr(0, &mut t) } != 0 {
        return None;
    }
    let saved = t;
    t.c_lflag &= !(ICANON | ECHO | ECHONL);
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    // SAFETY: as above; the settings were read from this terminal.
    if unsafe { tcsetattr(0, TCSANOW, &t) } != 0 {
        return None;
    }
    Some(saved)
}

fn restore_terminal(saved: &Termios) {
    // SAFETY: restores settings read from this terminal by `quiet_terminal`.
    unsafe { tcsetattr(0, TCSANOW, saved) };
}

/// Reads one line from fd 0 a byte at a time, so that nothing after it (the client's first keystrokes) is
/// taken from the shell.
fn read_line() -> Option<Vec<u8>> {
    // fd 0 stays open for the rest of the process, which ends in exec or exit: the File is never dropped.
    let mut stdin = std::mem::ManuallyDrop::new(stdin_file());
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stdin.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' || byte[0] == b'\r' => return Some(line),
            Ok(1) if line.len() < MAX_LINE => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => return None,
        }
    }
}

fn stdin_file() -> File {
    // SAFETY: fd 0 is open for the life of the process; the caller never drops the File.
    unsafe { File::from_raw_fd(0) }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// The environment a settings line carries, or `None` when the line is not a valid one.
fn parse(line: &[u8]) -> Option<Vec<(OsString, OsString)>> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    if words.next()? != VERSION {
        return None;
    }
    let mut env = Vec::new();
    for word in words {
        let pair = unhex(word.strip_prefix("e:")?)?;
        let eq = pair.iter().position(|&b| b == b'=')?;
        if eq == 0 || pair.contains(&0) {
            return None;
        }
        env.push((OsString::from_vec(pair[..eq].to_vec()), OsString::from_vec(pair[eq + 1..].to_vec())));
    }
    Some(env)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("berth-launch: no command: the profile's command follows the launcher");
        return ExitCode::from(NO_SETTINGS);
    };
    let saved = quiet_terminal();
    let mut out = std::io::stdout();
    // Ignored: with no output, berth never sees the launcher wait, and the pool replaces the container.
    let _ = out.write_all(READY).and_then(|()| out.flush());
    let line = read_line();
    if let Some(saved) = &saved {
        restore_terminal(saved);
    }
    let Some(env) = line.as_deref().and_then(parse) else {
        eprintln!("berth-launch: no valid settings line on stdin; not starting the command");
        return ExitCode::from(NO_SETTINGS);
    };
    let err = Command::new(&program).args(args).envs(env).exec();
    eprintln!("berth-launch: cannot run {}: {err}", program.to_string_lossy());
    ExitCode::from(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_line_gives_its_environment() {
        let env = parse(b"berth1 e:464f4f3d626172 e:454d5054593d").expect("valid");
        assert_eq!(env, vec![("FOO".into(), "bar".into()), ("EMPTY".into(), "".into())]);
        assert_eq!(parse(b"berth1"), Some(Vec::new()));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [&b"berth2"[..], b"berth1 x:00", b"berth1 e:3d78", b"berth1 e:46", b"berth1 e:4G", b"", b"FOO=bar"] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
