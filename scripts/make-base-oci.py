#!/usr/bin/env python3
"""Writes a multi-arch busybox OCI image layout from Debian's busybox-static binaries.

Test fixture only: it stands in for docker.io/library/busybox, which these machines cannot reach.
It is deliberately written without etcdimg's code, so that etcdimg reading it is a real check.

usage: make-base-oci.py OUT_DIR TAG ARCH=PATH_TO_BUSYBOX [ARCH=PATH ...]
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

PLATFORMS = {
    "amd64": ("amd64", None),
    "arm64": ("arm64", "v8"),
    "arm": ("arm", "v7"),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
}


def put_blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def layer_for(busybox_path, applets):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add_dir(name):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)

        for d in ["bin", "etc", "tmp", "usr", "usr/local", "usr/local/bin", "var"]:
            add_dir(d)
        with open(busybox_path, "rb") as f:
            body = f.read()
        info = tarfile.TarInfo("bin/busybox")
        info.mode = 0o755
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        for applet in sorted(applets):
            if applet == "busybox" or "/" in applet:
                continue
            info = tarfile.TarInfo("bin/" + applet)
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            info.mode = 0o777
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
        info = tarfile.TarInfo("etc/passwd")
        info.mode = 0o644
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    uncompressed = raw.getvalue()
    compressed = gzip.compress(uncompressed, compresslevel=6, mtime=0)
    return uncompressed, compressed


def main():
    out, tag = sys.argv[1], sys.argv[2]
    pairs = [a.split("=", 1) for a in sys.argv[3:]]
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    applets = subprocess.run(["busybox", "--list"], check=True, capture_output=True, text=True).stdout.split()
    manifests = []
    for arch, path in pairs:
        goarch, variant = PLATFORMS[arch]
        uncompressed, compressed = layer_for(path, applets)
        layer_digest, layer_size = put_blob(out, compressed)
        platform = {"architecture": goarch, "os": "linux"}
        if variant:
            platform["variant"] = variant
        config = dict(platform)
        config["created"] = "2023-01-01T00:00:00Z"
        config["config"] = {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        }
        config["rootfs"] = {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(uncompressed).hexdigest()]}
        config["history"] = [{"created": "2023-01-01T00:00:00Z", "created_by": "make-base-oci.py"}]
        config_digest, config_size = put_blob(out, json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}],
        }
        manifest_digest, manifest_size = put_blob(out, json.dumps(manifest, sort_keys=True).encode())
        manifests.append({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": platform,
        })
    image_index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    index_digest, index_size = put_blob(out, json.dumps(image_index, sort_keys=True).encode())
    top = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest,
            "size": index_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    }
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(top, f, sort_keys=True)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(index_digest)


if __name__ == "__main__":
    main()
