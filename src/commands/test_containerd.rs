//! The container rows of `etcdimg test --runtime containerd` (see `commands::test`): the image
//! imported into containerd and run with runc, as a Kubernetes node runs it.

use std::path::Path;

use anyhow::{Context, Result};

use super::test_report::TestReport;
use crate::containerd::{self, Containerd};
use crate::oci;
use crate::platform::Arch;
use crate::podcheck::{pod_migration, user_and_env, version_in, Ids};
use crate::settings::Settings;

pub use crate::pod::{pod_command, pod_env, pod_spec, Member, MEMBER};

/// The containerd a test run uses for every arch: the one at `address`, else a private one
/// (stopped when dropped).
pub fn open(address: Option<&Path>) -> Result<Containerd> {
    match address {
        Some(a) => Containerd::connect(a),
        None => Containerd::start_private(),
    }
    .context("the containerd to run the image in")
}

/// Adds the container rows to `report`.
pub fn checks(
    report: &mut TestReport,
    settings: &Settings,
    arch: Arch,
    layout_dir: &Path,
    ctd: &Containerd,
) -> Result<()> {
    let platform = oci::platform_string(&oci::platform_for(arch));
    let mut rows: Vec<String> = vec!["container user and env".into()];
    for v in &settings.bundled {
        rows.push(format!("etcd-{v}"));
        rows.push(format!("etcdctl-{v}"));
    }
    rows.extend([
        "etcd (default)".into(),
        "etcdctl (default)".into(),
        "migration".into(),
    ]);
    // An image containerd refuses (say, layers that do not match the config's diff IDs) is
    // a broken image: one failed row, the container rows not run.
    let image = match ctd.import(
        layout_dir,
        &settings.layout_ref(arch),
        "etcdimg.test/etcd",
        &platform,
    ) {
        Ok(image) => {
            report.check(
                "containerd import",
                Ok(format!("imported as {image} for {platform}")),
            );
            image
        }
        Err(e) => {
            report.check("containerd import", Err(e.to_string()));
            for r in rows {
                report.skip(r, "containerd did not import the image");
            }
            return Ok(());
        }
    };
    if let Err(why) = containerd::runnable(arch) {
        for r in rows {
            report.skip(r, &why);
        }
        return Ok(());
    }
    let ids = Ids::new();
    report.check(
        "container user and env",
        user_and_env(ctd, &image, &ids, arch),
    );
    for v in &settings.bundled {
        for name in ["etcd", "etcdctl"] {
            let path = format!("/usr/local/bin/{name}-{v}");
            report.check(
                format!("{name}-{v}"),
                version_in(ctd, &image, &ids, &path, name, v),
            );
        }
    }
    for name in ["etcd", "etcdctl"] {
        let path = format!("/usr/local/bin/{name}");
        report.check(
            format!("{name} (default)"),
            version_in(ctd, &image, &ids, &path, name, &settings.latest),
        );
    }
    report.check(
        "migration",
        pod_migration(ctd, &image, &ids, settings, arch),
    );
    Ok(())
}
