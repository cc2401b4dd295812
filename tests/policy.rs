//! etcd's version policy on the build side: versions below the production minimum or in a
//! known-bad range are built with a warning, refused by every release verb unless allowed, and
//! recorded in the release report when they are. The fixtures' 3.5.0 and 3.5.1 are such
//! versions (3.5.0-3.5.2: etcd-io/etcd#13766; below 3.5.6).

mod common;
use common::world::{json, project, world, World};
use common::*;

#[test]
fn unsafe_versions_warn_on_build_are_refused_on_release_and_recorded_when_allowed() {
    let t = "unsafe_versions_warn_on_build_are_refused_on_release_and_recorded_when_allowed";
    let Some(World {
        fx,
        registry,
        mirror,
        mut sb,
        ..
    }) = world(t, &[])
    else {
        return;
    };
    let counting = FaultProxy::start(registry.port, |_| Fault::Forward);
    let host = format!("127.0.0.1:{}", counting.port);
    project(
        &mut sb,
        mirror.port,
        &format!("{host}/k8s"),
        &format!("oci:{}:1.35", fx.join("busybox-oci").display()),
        &format!("insecure_registries = [\"{host}\"]"),
    );
    sb.unset("ETCDIMG_ALLOW_UNSAFE_VERSIONS");

    // build and test: a warning naming the advisory and the flag, and the build goes on.
    let out = sb.etcdimg(&["all-build"]);
    assert_success(&out);
    for needle in [
        "etcd 3.5.1 is below the production minimum 3.5.6",
        "etcd-io/etcd#13766",
        "--allow-unsafe-versions",
    ] {
        assert!(
            stderr(&out).contains(needle),
            "build: {needle}: {}",
            stderr(&out)
        );
    }
    let out = sb.etcdimg(&["test", "--arch", "amd64"]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("below the production minimum"),
        "test: {}",
        stderr(&out)
    );

    // Every release verb refuses, before its first request, naming the flag.
    for args in [
        vec!["push", "--arch", "amd64"],
        vec!["all-push"],
        vec!["push-manifest"],
        vec!["plan"],
    ] {
        let out = sb.etcdimg(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        for needle in [
            "refusing to release 3.5.1-0",
            "--allow-unsafe-versions",
            "hint:",
        ] {
            assert!(
                stderr(&out).contains(needle),
                "{args:?}: {needle}: {}",
                stderr(&out)
            );
        }
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
    assert!(
        counting.requests().is_empty(),
        "a refused release sent requests"
    );

    // Allowed: pushed, said on stderr, and recorded in the release report.
    let reports = sb.path().join("reports");
    let out = sb.etcdimg(&[
        "all-push",
        "--allow-unsafe-versions",
        "--report-dir",
        reports.to_str().unwrap(),
        "--json",
    ]);
    assert_success(&out);
    assert!(
        stderr(&out).contains("releasing it anyway"),
        "{}",
        stderr(&out)
    );
    // Said once, as allowed: not also as the build verbs' "push and plan refuse" warning.
    assert!(
        !stderr(&out).contains("refuse to release it without"),
        "{}",
        stderr(&out)
    );
    let pushed = json(&out);
    let file = pushed["report"]["written"]["json"]
        .as_str()
        .unwrap()
        .to_string();
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let allowed = report["etcd"]["unsafe_versions_allowed"].to_string();
    assert!(
        allowed.contains("etcd 3.5.1 is below the production minimum 3.5.6")
            && allowed.contains("etcd-io/etcd#14370"),
        "{allowed}"
    );
}
