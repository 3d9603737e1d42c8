use std::path::PathBuf;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::asciicast::{Code, Header, parse};
use super::audit::{AuditEntry, AuditEvent, AuditLog};
use super::*;

/// A fresh directory of this test's own under the system's temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn config(dir: &std::path::Path, mode: RecordingMode, input: bool, max_bytes: u64, queue: usize) -> RecorderConfig {
    RecorderConfig { dir: dir.to_path_buf(), mode, input, max_bytes, queue, metrics: None }
}

#[test]
fn names_carry_the_session_and_the_utc_start_and_only_such_names_are_recordings() {
    assert_eq!(utc_compact(0), "19700101T000000Z");
    assert_eq!(utc_compact(1_700_000_000), "20231114T221320Z");
    assert_eq!(utc_compact(1_709_164_800 + 3_723), "20240229T010203Z");
    let name = file_name("s-abc_1", 1_700_000_000);
    assert_eq!(name, "s-abc_1-20231114T221320Z.cast");
    assert!(is_recording_name(&name));
    for bad in ["../x.cast", ".x.cast", "x.txt", ".cast", "a b.cast", "a/b.cast"] {
        assert!(!is_recording_name(bad), "{bad}");
    }
}

#[tokio::test]
async fn output_resizes_and_input_when_asked_are_written_as_asciicast() {
    let dir = scratch("events");
    for input in [false, true] {
        let cfg = config(&dir, RecordingMode::BestEffort, input, 1 << 20, 64);
        let name = format!("s{}-19700101T000000Z.cast", u8::from(input));
        let (rec, task) = Recorder::start(&cfg, &name, Header::new(80, 24, 0, None)).await.expect("starts");
        let snow = "☃".as_bytes();
        rec.output(Bytes::from_static(b"$ "));
        rec.input(Bytes::from_static(b"ls\r"));
        rec.output(Bytes::copy_from_slice(&[b'x', snow[0]]));
        rec.output(Bytes::copy_from_slice(&snow[1..]));
        rec.resize(100, 30);
        let path = rec.path().to_path_buf();
        drop(rec);
        task.await.expect("the writer ends with its recorder");
        let text = std::fs::read_to_string(&path).expect("read");
        let (header, events) = parse(&text).expect("valid asciicast");
        assert_eq!((header.width, header.height), (80, 24));
        let codes: Vec<(Code, &str)> = events.iter().map(|e| (e.code, e.data.as_str())).collect();
        let mut want = vec![(Code::Output, "$ ")];
        if input {
            want.push((Code::Input, "ls\r"));
        }
        want.extend([(Code::Output, "x"), (Code::Output, "☃"), (Code::Resize, "100x30")]);
        assert_eq!(codes, want, "input recorded: {input}");
        assert!(events.windows(2).all(|w| w[0].at <= w[1].at), "times never go back");
    }
    let again = Recorder::start(
        &config(&dir, RecordingMode::BestEffort, false, 1 << 20, 1),
        "s0-19700101T000000Z.cast",
        Header::new(1, 1, 0, None),
    )
    .await;
    assert!(again.is_err(), "an existing recording is never overwritten");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_size_cap_stops_the_recording_at_a_whole_line_and_says_so() {
    let dir = scratch("cap");
    let cap = 300;
    let (rec, task) = Recorder::start(
        &config(&dir, RecordingMode::BestEffort, false, cap, 64),
        "capped-19700101T000000Z.cast",
        Header::new(80, 24, 0, None),
    )
    .await
    .expect("starts");
    let mut failed = rec.failed();
    for _ in 0..20 {
        rec.output(Bytes::from_static(b"0123456789abcdef0123456789abcdef"));
    }
    failed.wait_for(Option::is_some).await.expect("alive");
    assert_eq!(*failed.borrow(), Some(RecordingFailure::Capped(cap)));
    let path = rec.path().to_path_buf();
    drop(rec);
    task.await.expect("ends");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.len() as u64 <= cap, "{} bytes over a cap of {cap}", text.len());
    let (_, events) = parse(&text).expect("valid");
    assert!(!events.is_empty() && events.len() < 20, "{} events", events.len());
    assert!(text.ends_with('\n'));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_full_queue_is_counted_in_best_effort_and_fails_a_required_recording() {
    let dir = scratch("queue");
    for mode in [RecordingMode::BestEffort, RecordingMode::Required] {
        let name = format!("q{}-19700101T000000Z.cast", u8::from(mode == RecordingMode::Required));
        let (rec, task) = Recorder::start(&config(&dir, mode, false, 1 << 20, 1), &name, Header::new(80, 24, 0, None))
            .await
            .expect("starts");
        // The writer cannot run between these calls (one thread, no await): the second and third find it full.
        rec.output(Bytes::from_static(b"a"));
        rec.output(Bytes::from_static(b"b"));
        rec.output(Bytes::from_static(b"c"));
        assert_eq!(rec.stats().dropped.load(Ordering::Relaxed), if mode == RecordingMode::Required { 1 } else { 2 });
        let failed = rec.failed().borrow().clone();
        match mode {
            RecordingMode::BestEffort => assert_eq!(failed, None),
            RecordingMode::Required => assert_eq!(failed, Some(RecordingFailure::QueueFull)),
        }
        drop(rec);
        task.await.expect("ends");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn repair_trims_a_torn_last_line_and_list_shows_only_recordings() {
    let dir = scratch("repair");
    let path = dir.join("torn-19700101T000000Z.cast");
    let whole = format!("{}[0.1, \"o\", \"a\"]\n", Header::new(80, 24, 0, None).line());
    let torn = "[0.2, \"o\", \"b";
    std::fs::write(&path, format!("{whole}{torn}")).expect("write");
    std::fs::write(dir.join("notes.txt"), "not a recording").expect("write");
    assert_eq!(repair(&path).await.expect("repairs"), torn.len() as u64);
    assert_eq!(std::fs::read_to_string(&path).expect("read"), whole);
    assert_eq!(repair(&path).await.expect("repairs"), 0, "a whole file is left as it is");
    let listed = list(&dir).await.expect("lists");
    assert_eq!(listed.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["torn-19700101T000000Z.cast"]);
    assert_eq!(listed[0].size, whole.len() as u64);
    assert!(list(&dir.join("absent")).await.expect("an absent directory lists nothing").is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_audit_log_appends_one_json_line_per_entry() {
    let dir = scratch("audit");
    let path = dir.join("audit.jsonl");
    std::fs::write(&path, "{\"earlier\":true}\n").expect("an earlier line");
    let (log, task) = AuditLog::open(&path, 8).await.expect("opens");
    let start = AuditEntry {
        time_ms: 1,
        event: AuditEvent::Start,
        session: "s1".into(),
        profile: "default".into(),
        identity: Some("alice".into()),
        client_ip: Some("203.0.113.7".parse().expect("ip")),
        reason: None,
        bytes_in: 0,
        bytes_out: 0,
        recording: Some("s1-19700101T000000Z.cast".into()),
    };
    let end = AuditEntry {
        time_ms: 2,
        event: AuditEvent::End,
        reason: Some("exited".into()),
        bytes_in: 3,
        bytes_out: 9,
        ..start.clone()
    };
    log.record(&start);
    log.record(&end);
    drop(log);
    task.await.expect("ends");
    let text = std::fs::read_to_string(&path).expect("read");
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(lines.len(), 3, "appended after the earlier line");
    assert_eq!(lines[1]["event"], "start");
    assert_eq!(lines[1]["client_ip"], "203.0.113.7");
    assert!(lines[1].get("reason").is_none());
    assert_eq!(lines[2]["event"], "end");
    assert_eq!(lines[2]["reason"], "exited");
    assert_eq!((lines[2]["bytes_in"].as_u64(), lines[2]["bytes_out"].as_u64()), (Some(3), Some(9)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_keeper_removes_only_expired_recordings_that_are_not_being_written() {
    use berth_reconciler::retention::Retention;
    let dir = scratch("keeper");
    let long_ago = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    for name in ["old-20010909T014640Z.cast", "writing-20010909T014640Z.cast", "notes.txt"] {
        let f = std::fs::File::create(dir.join(name)).expect("create");
        f.set_modified(long_ago).expect("mtime");
    }
    std::fs::write(dir.join("new-20261206T000000Z.cast"), "{}\n").expect("new");
    let active = std::collections::BTreeSet::from(["writing-20010909T014640Z.cast".to_owned()]);
    let rules = Retention { max_age: Some(std::time::Duration::from_secs(86_400)), max_total_bytes: None };
    let removed = super::keeper::retain(&dir, &active, rules).await.expect("retains");
    assert_eq!(removed, ["old-20010909T014640Z.cast"]);
    for kept in ["writing-20010909T014640Z.cast", "notes.txt", "new-20261206T000000Z.cast"] {
        assert!(dir.join(kept).exists(), "{kept} stays");
    }
    assert!(super::keeper::retain(&dir, &active, Retention::default()).await.expect("no rules").is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_keeper_repairs_every_torn_recording_in_the_directory() {
    let dir = scratch("repair-all");
    let head = Header::new(80, 24, 0, None).line();
    std::fs::write(dir.join("a-19700101T000000Z.cast"), format!("{head}[0.1, \"o\", \"x\"]\n[0.2, \"o")).expect("a");
    std::fs::write(dir.join("b-19700101T000000Z.cast"), format!("{head}[0.1, \"o\", \"y\"]\n")).expect("b");
    std::fs::write(dir.join("torn.txt"), "no newline").expect("foreign");
    assert_eq!(super::keeper::repair_all(&dir).await.expect("repairs"), 1);
    let a = std::fs::read_to_string(dir.join("a-19700101T000000Z.cast")).expect("a");
    assert!(a.ends_with("\"x\"]\n"), "{a:?}");
    assert_eq!(std::fs::read_to_string(dir.join("torn.txt")).expect("foreign"), "no newline", "not berth's");
    let _ = std::fs::remove_dir_all(&dir);
}
