//! Settings that weaken a session's confinement are refused unless the profile acknowledges each one in its
//! `unsafe` list; acknowledged, they parse and are listed by `Profile::unsafe_settings` (which `berth policy
//! check` prints). Also: the per-process limits (`resources.nofile`, `nproc`, `core`) and their defaults.

use berth_reconciler::Policy;
use berth_reconciler::policy::{Ulimit, UnsafeSetting};
use berth_reconciler::policy_file::parse_policy;

const HEADER: &str = "apiVersion: berth.dev/v1\nkind: Policy\n";

fn parse(profile_body: &str) -> Result<Policy, Vec<String>> {
    let text = format!("{HEADER}profiles:\n  dev:\n    image: foo\n{profile_body}default_profile: dev\n");
    parse_policy(&text, "p.yaml").map_err(|e| e.errors.iter().map(ToString::to_string).collect())
}

/// Each unsafe value, as profile lines, with the acknowledgement it needs and the key and line it is refused at.
fn cases() -> Vec<(&'static str, UnsafeSetting, &'static str)> {
    vec![
        (
            "    security: {seccomp: unconfined}\n",
            UnsafeSetting::SeccompUnconfined,
            "p.yaml:6:25: profiles.dev.security.seccomp",
        ),
        (
            "    security: {apparmor: unconfined}\n",
            UnsafeSetting::ApparmorUnconfined,
            "p.yaml:6:26: profiles.dev.security.apparmor",
        ),
        (
            "    security: {cap_drop_all: false}\n",
            UnsafeSetting::Capabilities,
            "p.yaml:6:30: profiles.dev.security.cap_drop_all",
        ),
        (
            "    security: {no_new_privileges: false}\n",
            UnsafeSetting::NewPrivileges,
            "p.yaml:6:35: profiles.dev.security.no_new_privileges",
        ),
        ("    user: root\n", UnsafeSetting::RootUser, "p.yaml:6:11: profiles.dev.user"),
        ("    user: \"0:0\"\n", UnsafeSetting::RootUser, "p.yaml:6:11: profiles.dev.user"),
        (
            "    security:\n      tmpfs: [{path: /tmp, options: \"rw,nosuid,size=64m\"}]\n",
            UnsafeSetting::TmpfsExec,
            "p.yaml:7:37: profiles.dev.security.tmpfs",
        ),
        (
            "    security:\n      tmpfs: [{path: /tmp, options: \"rw,noexec,nosuid\"}]\n",
            UnsafeSetting::TmpfsUnbounded,
            "p.yaml:7:37: profiles.dev.security.tmpfs",
        ),
        (
            "    security:\n      tmpfs: [{path: /tmp, options: \"rw,noexec,size=0\"}]\n",
            UnsafeSetting::TmpfsUnbounded,
            "p.yaml:7:37: profiles.dev.security.tmpfs",
        ),
        ("    network: bridge\n", UnsafeSetting::Network, "p.yaml:6:14: profiles.dev.network"),
        ("    network: my-net\n", UnsafeSetting::Network, "p.yaml:6:14: profiles.dev.network"),
    ]
}

#[test]
fn each_unsafe_value_is_refused_without_an_acknowledgement_located_and_naming_the_acknowledgement() {
    for (body, setting, at) in cases() {
        let errs = parse(body).expect_err(body);
        assert_eq!(errs.len(), 1, "{body}: {errs:#?}");
        assert!(errs[0].starts_with(&format!("{at}: unsafe: ")), "{body}: {errs:#?}");
        assert!(errs[0].contains(&format!("`unsafe: [{}]`", setting.as_str())), "{body}: {errs:#?}");
    }
}

#[test]
fn each_unsafe_value_is_accepted_when_acknowledged_and_listed() {
    for (body, setting, _) in cases() {
        let text = format!("{body}    unsafe: [{}]\n", setting.as_str());
        let policy = parse(&text).unwrap_or_else(|e| panic!("{text}: {e:#?}"));
        let profile = &policy.profiles[&"dev".parse().expect("name")];
        assert_eq!(profile.unsafe_settings(), vec![setting], "{text}");
        assert!(profile.acknowledged_unsafe.contains(&setting));
    }
}

#[test]
fn an_acknowledgement_covers_only_its_own_setting() {
    let errs =
        parse("    network: bridge\n    user: root\n    unsafe: [network]\n").expect_err("root is not acknowledged");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("p.yaml:7:11: profiles.dev.user: unsafe: "), "{errs:#?}");
}

#[test]
fn unknown_and_repeated_acknowledgements_are_refused() {
    let errs = parse("    unsafe: [root, network, network]\n").expect_err("refused");
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].contains("\"root\" is not an unsafe setting: use seccomp_unconfined,"), "{errs:#?}");
    assert!(errs[1].contains("network is listed twice"), "{errs:#?}");
}

#[test]
fn the_defaults_are_safe_and_an_unused_acknowledgement_is_kept_for_the_check_to_report() {
    let policy = parse("").expect("valid");
    let profile = &policy.profiles[&"dev".parse().expect("name")];
    assert!(profile.unsafe_settings().is_empty());
    let policy = parse("    unsafe: [root_user]\n").expect("an unused acknowledgement is not an error");
    let profile = &policy.profiles[&"dev".parse().expect("name")];
    assert!(profile.unsafe_settings().is_empty());
    assert!(profile.acknowledged_unsafe.contains(&UnsafeSetting::RootUser));
    // exec after noexec wins, as in mount(8).
    let errs = parse("    security:\n      tmpfs: [{path: /x, options: \"noexec,exec,size=1m\"}]\n").expect_err("exec");
    assert!(errs[0].contains("`unsafe: [tmpfs_exec]`"), "{errs:#?}");
}

#[test]
fn per_process_limits_have_safe_defaults_and_take_soft_and_hard_values() {
    let default = Policy::default();
    let d = &default.profiles.values().next().expect("one").resources;
    assert_eq!((d.nofile, d.nproc, d.core), (Ulimit { soft: 1024, hard: 4096 }, Ulimit::fixed(8192), Ulimit::fixed(0)));
    let policy = parse("    resources: {nofile: \"2048:8192\", nproc: 512, core: 1MiB}\n").expect("valid limits");
    let r = &policy.profiles[&"dev".parse().expect("name")].resources;
    assert_eq!(
        (r.nofile, r.nproc, r.core),
        (Ulimit { soft: 2048, hard: 8192 }, Ulimit::fixed(512), Ulimit::fixed(1 << 20))
    );
    let errs = parse("    resources: {nofile: \"4096:1024\", nproc: 0, core: 2GiB}\n").expect_err("refused");
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].contains("resources.nofile: 4096:1024: the soft limit must not exceed the hard limit"),
        "{errs:#?}"
    );
    assert!(errs[1].contains("resources.nproc: "), "{errs:#?}");
    assert!(errs[2].contains("resources.core: 2GiB is out of range"), "{errs:#?}");
}
