//! The warm pool against a real Docker engine (decision 0025): a pooled container built from the launcher waits
//! for its settings without echoing them, a claim renames it to the session's name (which a later list reads
//! back), and the session's environment reaches the shell. Bounded, and no container is left behind.

mod common;

use std::time::Duration;

use berth::reconciler::desired::EnvVar;
use berth::reconciler::pool::{LAUNCHER_WAITING, pooled_spec, settings_line};
use berth::reconciler::{ClaimedName, PoolLabels, SessionId, SessionKind, Timestamp, resume_hash};
use berth::runtime::{AttachIo, Runtime};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(30);

/// Reads the attach stream into `seen` until it holds `needle`, or fails the test after `LIMIT`.
async fn until(io: &mut AttachIo, seen: &mut Vec<u8>, needle: &[u8]) {
    let found = tokio::time::timeout(LIMIT, async {
        while !seen.windows(needle.len()).any(|w| w == needle) {
            match io.output.next().await {
                Some(Ok(b)) => seen.extend_from_slice(&b),
                other => panic!("the stream ended before {:?}: {other:?}", String::from_utf8_lossy(needle)),
            }
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no {:?} within {LIMIT:?}; saw {:?}",
        String::from_utf8_lossy(needle),
        String::from_utf8_lossy(seen)
    );
}

#[tokio::test]
async fn a_pooled_container_takes_its_settings_silently_and_is_recognised_as_its_sessions_after_the_claim() {
    let rt = common::docker().await;
    let world = common::World::with_prefix("p");
    let mut policy = world.policy.clone();
    let profile = policy.profiles.values_mut().next().expect("the default profile");
    profile.command = Some(vec!["/bin/sh".into(), "-i".into()]);
    profile.env.insert("FIXED".into(), "from-the-profile".into());
    let profile = profile.clone();
    let dir = std::env::temp_dir().join(format!("berth-pool-test-{}", world.instance));
    let launcher = berth::launcher::install(&dir).expect("install the launcher");
    let labels = PoolLabels {
        profile: policy.default_profile.clone(),
        owner: world.instance.clone(),
        epoch: 1,
        created_at: Timestamp::from_millis(1),
        policy_hash: profile.hash(),
    };
    let spec = pooled_spec(&profile, &labels, &policy, 1, &launcher.display().to_string()).expect("poolable");

    let id = rt.create(&spec).await.expect("create");
    let result = async {
        let mut io = rt.attach(&id, false).await.expect("attach");
        rt.start(&id).await.expect("start");
        let mut seen = Vec::new();
        until(&mut io, &mut seen, LAUNCHER_WAITING).await;

        let listed = rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].labels.clone(), listed[0].claimed.clone()), (labels.clone(), None));
        assert!(world.containers(None).is_empty(), "a pooled container carries no session marker");

        // The claim: the rename is the commit point, then the settings line.
        let claimed = ClaimedName {
            session: SessionId::generate().expect("id"),
            kind: SessionKind::Authenticated,
            resume_hash: Some(resume_hash("the secret")),
        };
        rt.rename(&id, &claimed.render(&policy.docker.name_prefix)).await.expect("rename");
        let listed = rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list");
        assert_eq!(listed[0].claimed.as_ref(), Some(&claimed), "the claim reads back from the name");
        let identity = claimed.managed_labels(&listed[0].labels);
        assert_eq!((identity.session, identity.kind), (claimed.session, SessionKind::Authenticated));

        let env = [EnvVar { name: "TOKEN".into(), value: "s3cret value".into(), sensitive: true }];
        let line = settings_line(&env);
        io.input.write_all(&line).await.expect("write settings");
        io.input.write_all(b"echo \"[$TOKEN|$FIXED]\"\n").await.expect("write a command");
        io.input.flush().await.expect("flush");
        until(&mut io, &mut seen, b"[s3cret value|from-the-profile]").await;
        let text = String::from_utf8_lossy(&seen);
        let hex = String::from_utf8_lossy(&line[7..20]).into_owned();
        assert!(!text.contains(&hex) && !text.contains("berth1"), "the settings line was echoed: {text:?}");
    };
    let outcome = tokio::time::timeout(Duration::from_secs(90), result).await;
    rt.remove(&id).await.expect("remove");
    let _ = std::fs::remove_dir_all(&dir);
    outcome.expect("bounded");
    let left = rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list");
    assert!(left.is_empty(), "leftovers: {left:?}");
}

#[tokio::test]
async fn a_claim_never_takes_a_name_already_taken() {
    let rt = common::docker().await;
    let world = common::World::with_prefix("p");
    let mut policy = world.policy.clone();
    let profile = policy.profiles.values_mut().next().expect("the default profile");
    profile.command = Some(vec!["/bin/sh".into(), "-i".into()]);
    let profile = profile.clone();
    let dir = std::env::temp_dir().join(format!("berth-pool-test-{}", world.instance));
    let launcher = berth::launcher::install(&dir).expect("install the launcher");
    let labels = PoolLabels {
        profile: policy.default_profile.clone(),
        owner: world.instance.clone(),
        epoch: 1,
        created_at: Timestamp::from_millis(1),
        policy_hash: profile.hash(),
    };
    let path = launcher.display().to_string();
    let a = rt.create(&pooled_spec(&profile, &labels, &policy, 1, &path).expect("poolable")).await.expect("create");
    let b = rt.create(&pooled_spec(&profile, &labels, &policy, 2, &path).expect("poolable")).await.expect("create");
    let name =
        ClaimedName { session: SessionId::generate().expect("id"), kind: SessionKind::Anonymous, resume_hash: None }
            .render(&policy.docker.name_prefix);
    let first = rt.rename(&a, &name).await;
    let second = rt.rename(&b, &name).await;
    for id in [&a, &b] {
        rt.remove(id).await.expect("remove");
    }
    let _ = std::fs::remove_dir_all(&dir);
    first.expect("the first claim");
    assert!(matches!(second, Err(berth::runtime::RuntimeError::Conflict(_))), "{second:?}");
    assert!(rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list").is_empty());
}

/// A pooled container whose launcher gets anything but a settings line never runs its command: it exits with
/// status 120, so a claim whose settings went missing (a crash between the rename and the line) ends its session
/// rather than giving a shell without the session's settings.
#[tokio::test]
async fn a_launcher_given_anything_but_a_settings_line_exits_without_running_the_command() {
    let rt = common::docker().await;
    let world = common::World::with_prefix("p");
    let mut policy = world.policy.clone();
    let profile = policy.profiles.values_mut().next().expect("the default profile");
    profile.command = Some(vec!["/bin/sh".into(), "-c".into(), "echo RAN".into()]);
    let profile = profile.clone();
    let dir = std::env::temp_dir().join(format!("berth-pool-test-{}", world.instance));
    let launcher = berth::launcher::install(&dir).expect("install the launcher");
    let labels = PoolLabels {
        profile: policy.default_profile.clone(),
        owner: world.instance.clone(),
        epoch: 1,
        created_at: Timestamp::from_millis(1),
        policy_hash: profile.hash(),
    };
    let spec = pooled_spec(&profile, &labels, &policy, 1, &launcher.display().to_string()).expect("poolable");
    let id = rt.create(&spec).await.expect("create");
    let result = async {
        let mut io = rt.attach(&id, false).await.expect("attach");
        rt.start(&id).await.expect("start");
        let mut seen = Vec::new();
        until(&mut io, &mut seen, LAUNCHER_WAITING).await;
        io.input.write_all(b"ls -la /\n").await.expect("write what a user might type");
        io.input.flush().await.expect("flush");
        until(&mut io, &mut seen, b"no valid settings line").await;
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let listed = rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list");
            if listed.iter().any(|c| c.state == berth::reconciler::ContainerState::Exited) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the launcher did not exit: {listed:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let exit = world.cli(&["inspect", "--format", "{{.State.ExitCode}}", id.as_str()]);
        assert_eq!(exit, "120");
        assert!(!String::from_utf8_lossy(&seen).contains("RAN"), "the command ran");
    };
    let outcome = tokio::time::timeout(Duration::from_secs(90), result).await;
    rt.remove(&id).await.expect("remove");
    let _ = std::fs::remove_dir_all(&dir);
    outcome.expect("bounded");
    assert!(rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list").is_empty());
}
