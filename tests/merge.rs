//! Per-arch jobs merged natively (issue #23): layouts built separately (as release.yml's
//! per-arch jobs do) merged by `etcdimg merge` and pushed by push-manifest; every arch of
//! images.toml exactly once, for the same tag and revision, or a refusal that writes nothing.

mod common;

use common::world::{json, skopeo_json, world, World};
use common::*;

#[test]
fn per_arch_layouts_merge_into_one_release_or_are_refused() {
    let t = "per_arch_layouts_merge_into_one_release_or_are_refused";
    let Some(mut w) = world(t, &[]) else {
        return;
    };
    w.local_project("");
    let World { mut sb, host, .. } = w;
    let root = sb.path().to_path_buf();
    let dir = |name: &str| root.join(name).to_str().unwrap().to_string();
    for (arch, out) in [("amd64", "job-amd64"), ("arm64", "job-arm64")] {
        assert_success(&sb.etcdimg(&["build", "--arch", arch, "--output", &dir(out)]));
    }
    // Another amd64 image of the same tag (another mtime), and one of another revision.
    sb.set("SOURCE_DATE_EPOCH", "1");
    assert_success(&sb.etcdimg(&["build", "--arch", "amd64", "--output", &dir("other-amd64")]));
    sb.unset("SOURCE_DATE_EPOCH");
    assert_success(&sb.etcdimg(&[
        "build",
        "--arch",
        "amd64",
        "--revision",
        "1",
        "--output",
        &dir("rev1"),
    ]));

    let refused = [
        (vec!["job-amd64"], "no layout holds the arm64 image"),
        (
            vec!["job-amd64", "job-arm64", "other-amd64"],
            "amd64 is in two layouts with different images",
        ),
        (
            vec!["rev1", "job-arm64"],
            "was built for 3.5.1-1, but images.toml releases 3.5.1-0",
        ),
    ];
    for (from, needle) in refused {
        let mut args = vec!["merge".to_string(), "--output".into(), dir("merged")];
        for f in &from {
            args.extend(["--from".to_string(), dir(f)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sb.etcdimg(&args);
        assert_eq!(out.status.code(), Some(1), "{from:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{from:?}: {}", stderr(&out));
        assert!(
            !sb.path().join("merged").exists(),
            "{from:?}: a refused merge wrote the output"
        );
    }

    let out = sb.etcdimg(&[
        "merge",
        "--from",
        &dir("job-amd64"),
        "--from",
        &dir("job-arm64"),
        "--output",
        &dir("merged"),
        "--json",
    ]);
    assert_success(&out);
    let merged = json(&out);
    assert_eq!(merged["images"].as_array().unwrap().len(), 2, "{merged}");
    // The same images the jobs pushed: push each from its own layout, the index from the merge.
    for (arch, out) in [("amd64", "job-amd64"), ("arm64", "job-arm64")] {
        assert_success(&sb.etcdimg(&["push", "--arch", arch, "--output", &dir(out)]));
    }
    let out = sb.etcdimg(&[
        "push-manifest",
        "--output",
        &dir("merged"),
        "--no-report",
        "--json",
    ]);
    assert_success(&out);
    let index = skopeo_json(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/etcd:3.5.1-0"),
    ]);
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"], "{index}");
    // The merged layout also serves plan, report and sign like an all-build one.
    let out = sb.etcdimg(&["plan", "--no-build", "--output", &dir("merged")]);
    assert_success(&out);
    assert!(stdout(&out).contains("keep"), "{}", stdout(&out));
}
