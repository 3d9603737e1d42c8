//! Writing create bodies: a session or pooled container's from its spec, a sentinel's or claim's.

use std::collections::HashMap;
use std::time::Duration;

use berth_reconciler::ContainerSpec;
use berth_reconciler::isolation::drops_pids_limit;
use berth_reconciler::peers::MarkerSpec;
use berth_reconciler::policy::Ulimit;
use berth_reconciler::pool::LAUNCHER_PATH;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, HostConfigCgroupnsModeEnum, HostConfigLogConfig, Mount, MountType,
    ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};

/// A sentinel's or claim's create body: the smallest, most confined container Docker runs, logging nothing.
pub fn marker_body(spec: &MarkerSpec) -> ContainerCreateBody {
    let host_config = HostConfig {
        memory: Some(16 << 20),
        memory_swap: Some(16 << 20),
        nano_cpus: Some(100_000_000),
        pids_limit: Some(4),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
        network_mode: Some("none".to_owned()),
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        ulimits: Some(vec![
            ulimit("nofile", Ulimit::fixed(64)),
            ulimit("nproc", Ulimit::fixed(8192)),
            ulimit("core", Ulimit::fixed(0)),
        ]),
        restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
        auto_remove: Some(false),
        log_config: Some(HostConfigLogConfig { typ: Some("none".to_owned()), config: None }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.command.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        user: Some("65534:65534".to_owned()),
        tty: Some(false),
        open_stdin: Some(spec.stdin),
        stdin_once: Some(spec.stdin),
        attach_stdin: Some(spec.stdin),
        attach_stdout: Some(spec.stdin),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn ulimit(name: &str, limit: Ulimit) -> ResourcesUlimits {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    ResourcesUlimits { name: Some(name.to_owned()), soft: Some(n(limit.soft)), hard: Some(n(limit.hard)) }
}

fn secs_to_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Translates berth's container spec into Docker's create body: TTY and open stdin, hardening from the profile
/// (per-process limits included), a private cgroup namespace, restart policy `no`, bounded logs.
pub fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let sec = &spec.security;
    let mut security_opt = Vec::new();
    if sec.no_new_privileges {
        security_opt.push("no-new-privileges:true".to_owned());
    }
    if let Some(p) = &sec.seccomp {
        security_opt.push(format!("seccomp={p}"));
    }
    if let Some(p) = &sec.apparmor {
        security_opt.push(format!("apparmor={p}"));
    }
    let tmpfs: HashMap<String, String> = sec.tmpfs.iter().map(|t| (t.path.clone(), t.options.clone())).collect();
    let host_config = HostConfig {
        memory: Some(spec.resources.memory_bytes),
        memory_swap: Some(spec.resources.memory_bytes),
        nano_cpus: Some(spec.resources.nano_cpus),
        // gVisor counts its own threads against this limit and dies on reaching it (berth_reconciler::isolation).
        pids_limit: (!drops_pids_limit(spec.runtime.as_deref())).then_some(spec.resources.pids),
        ulimits: Some(vec![
            ulimit("nofile", spec.resources.nofile),
            ulimit("nproc", spec.resources.nproc),
            ulimit("core", spec.resources.core),
        ]),
        // Docker's default follows the daemon (host on cgroup v1): the session would see the host's cgroup tree.
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        runtime: spec.runtime.clone(),
        readonly_rootfs: Some(sec.read_only_root),
        cap_drop: sec.cap_drop_all.then(|| vec!["ALL".to_owned()]),
        security_opt: Some(security_opt),
        tmpfs: Some(tmpfs),
        init: Some(sec.init),
        network_mode: Some(spec.network.clone()),
        restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
        auto_remove: Some(false),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), spec.logs.max_size.clone()),
                ("max-file".to_owned(), spec.logs.max_files.to_string()),
            ])),
        }),
        ..Default::default()
    };
    let healthcheck = spec.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(std::iter::once("CMD".to_owned()).chain(h.command.iter().cloned()).collect()),
        interval: Some(secs_to_nanos(h.interval)),
        timeout: Some(secs_to_nanos(h.timeout)),
        retries: Some(i64::from(h.retries)),
        start_period: Some(secs_to_nanos(h.start_period)),
        start_interval: None,
    });
    // A warm-pool container runs berth's launcher, mounted read-only like Docker's own --init, ahead of the
    // profile's command (decision 0025).
    let (entrypoint, mounts) = match &spec.launcher {
        Some(path) => (
            Some(vec![LAUNCHER_PATH.to_owned()]),
            Some(vec![Mount {
                target: Some(LAUNCHER_PATH.to_owned()),
                source: Some(path.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            }]),
        ),
        None => (None, None),
    };
    let host_config = HostConfig { mounts, ..host_config };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint,
        cmd: spec.command.clone(),
        env: Some(spec.env.iter().map(|e| format!("{}={}", e.name, e.value)).collect()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        user: Some(spec.user.clone()),
        working_dir: spec.working_dir.clone(),
        tty: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(false),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        healthcheck,
        host_config: Some(host_config),
        ..Default::default()
    }
}
