//! berth-launch: the main process of a warm-pool container (decision 0025).
//!
//! berth mounts this binary read-only into a pooled container and runs it as the entrypoint, with the profile's
//! command as its arguments. It turns the terminal's echo and line editing off, announces that it waits, reads
//! exactly one line of settings from its stdin (which only berth's attach stream can write to), restores the
//! terminal, sets the session's environment and execs the command. Nothing of the line is ever echoed.
//!
//! The line is `berth1` followed by ` e:<hex of NAME=value>` per variable, ended by `\n`; or `berth2`, then
//! ` s:<cols>x<rows>` (the terminal size, which the launcher sets on its terminal before it runs the command),
//! then the variables. The announcement names the launcher's version (`;3`). Once a line is read, the launcher
//! prints `ESC ] berth;launcher-claimed BEL` and a newline before anything else. Anything else, an over-long line
//! or end of input makes the launcher exit with status 120 without running the command, so a container whose
//! settings did not arrive whole never runs a shell.
//!
//! Statically linked and free of dependencies (build.rs compiles it with `-C target-feature=+crt-static`), it
//! runs in any image, `FROM scratch` included. The only unsafe code is the two termios calls and the one that
//! sets the terminal size.

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
const READY: &[u8] = b"\x1b]berth;launcher-waiting;3\x07\n";
/// Printed once a line was read, before anything else: berth hands the terminals only what follows it (the
/// newline too), and a restarted berth that finds it in the engine's log knows this container took a claim's
/// settings (berth may write the settings while the claim's rename is still under way). The newline puts it in
/// that log at once: the engine keeps a line only once it ends, and the command may never end one.
const CLAIMED: &[u8] = b"\x1b]berth;launcher-claimed\x07\n";
/// The first word of a settings line without a terminal size, and of one with.
const VERSION_1: &str = "berth1";
const VERSION_2: &str = "berth2";
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

/// The kernel's `struct winsize`.
#[repr(C)]
struct Winsize {
    ws_row: u16,
    ws_col: u16,
    ws_xpixel: u16,
    ws_ypixel: u16,
}

unsafe extern "C" {
    fn tcgetattr(fd: i32, t: *mut Termios) -> i32;
    fn tcsetattr(fd: i32, when: i32, t: *const Termios) -> i32;
    fn ioctl(fd: i32, request: std::ffi::c_ulong, ...) -> i32;
}

/// `TIOCSWINSZ` (the same on every Linux architecture berth builds for).
const TIOCSWINSZ: std::ffi::c_ulong = 0x5414;

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

/// Sets the size of the terminal on stdin (ignored when stdin is no terminal: the command runs anyway).
fn set_size((cols, rows): (u16, u16)) {
    let size = Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: fd 0 is ours; `size` is a valid `struct winsize` that outlives the call.
    unsafe { ioctl(0, TIOCSWINSZ, &size as *const Winsize) };
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

/// What a settings line carries: the terminal size, when given, and the environment.
#[derive(Debug, PartialEq, Eq)]
struct Settings {
    size: Option<(u16, u16)>,
    env: Vec<(OsString, OsString)>,
}

/// `<cols>x<rows>`, each 1 to 1000 (the WebSocket layer's bounds).
fn parse_size(s: &str) -> Option<(u16, u16)> {
    let (cols, rows) = s.split_once('x')?;
    let dim = |d: &str| d.parse::<u16>().ok().filter(|n| (1..=1000).contains(n) && !d.starts_with('0'));
    Some((dim(cols)?, dim(rows)?))
}

/// What a settings line carries, or `None` when the line is not a valid one.
fn parse(line: &[u8]) -> Option<Settings> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split(' ');
    let size = match words.next()? {
        VERSION_1 => None,
        VERSION_2 => Some(parse_size(words.next()?.strip_prefix("s:")?)?),
        _ => return None,
    };
    let mut env = Vec::new();
    for word in words {
        let pair = unhex(word.strip_prefix("e:")?)?;
        let eq = pair.iter().position(|&b| b == b'=')?;
        if eq == 0 || pair.contains(&0) {
            return None;
        }
        env.push((OsString::from_vec(pair[..eq].to_vec()), OsString::from_vec(pair[eq + 1..].to_vec())));
    }
    Some(Settings { size, env })
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
    if line.is_some() {
        // Ignored as above: berth, not seeing it, removes the container.
        let _ = out.write_all(CLAIMED).and_then(|()| out.flush());
    }
    if let Some(saved) = &saved {
        restore_terminal(saved);
    }
    let Some(settings) = line.as_deref().and_then(parse) else {
        eprintln!("berth-launch: no valid settings line on stdin; not starting the command");
        return ExitCode::from(NO_SETTINGS);
    };
    if let Some(size) = settings.size {
        set_size(size);
    }
    let err = Command::new(&program).args(args).envs(settings.env).exec();
    eprintln!("berth-launch: cannot run {}: {err}", program.to_string_lossy());
    ExitCode::from(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_line_gives_its_environment_and_a_berth2_line_its_size() {
        let s = parse(b"berth1 e:464f4f3d626172 e:454d5054593d").expect("valid");
        assert_eq!(s.env, vec![("FOO".into(), "bar".into()), ("EMPTY".into(), "".into())]);
        assert_eq!(s.size, None);
        assert_eq!(parse(b"berth1"), Some(Settings { size: None, env: Vec::new() }));
        let s = parse(b"berth2 s:132x43 e:464f4f3d626172").expect("valid");
        assert_eq!((s.size, s.env), (Some((132, 43)), vec![("FOO".into(), "bar".into())]));
        assert_eq!(parse(b"berth2 s:1x1000").map(|s| s.size), Some(Some((1, 1000))));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            &b"berth2"[..],
            b"berth3",
            b"berth2 e:464f4f3d626172",
            b"berth2 s:80",
            b"berth2 s:0x24",
            b"berth2 s:1001x24",
            b"berth2 s:080x24",
            b"berth2 s:80x24x1",
            b"berth1 s:80x24",
            b"berth1 x:00",
            b"berth1 e:3d78",
            b"berth1 e:46",
            b"berth1 e:4G",
            b"",
            b"FOO=bar",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
