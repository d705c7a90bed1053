#!/usr/bin/env python3
"""Build hull's test image without a registry: busybox-static as one layer.

The output tar is an OCI image layout (oci-layout, index.json, blobs/) and at
the same time a docker-archive (manifest.json), so both `ctr image import`
and `docker load` take it. Everything is deterministic (mtime 0, sorted
entries): the same busybox gives the same image digest.

Usage: busybox-image.py OUT.tar [--name docker.io/library/busybox:hull]
                                [--busybox /bin/busybox] [--symlink PATH=TARGET ...]
                                [--filler-mib N] [--cmd JSON]

--symlink adds symlinks to the layer (tests use it to build hostile images,
e.g. `--symlink opt/job=/etc/cron.d`). --filler-mib adds N files of 1 MiB
under /opt/filler (a large image for `hull bench io --large-image-tar`).
--cmd sets the image's command (a JSON list; the tests' pod sandbox image:
`--cmd '["sleep", "2147483647"]'`).
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
hull:x:1000:1000:hull test user:/home/hull:/bin/sh
"""
GROUP = """root:x:0:
daemon:x:1:
users:x:100:hull
nogroup:x:65534:
hull:x:1000:
"""


def tar_entry(tar, name, data=None, mode=0o644, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = mode
    info.type = kind
    info.linkname = link
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def applets(busybox):
    out = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True)
    return sorted(set(line.strip() for line in out.stdout.splitlines() if line.strip()))


def build_layer(busybox, symlinks=(), filler_mib=0):
    with open(busybox, "rb") as f:
        binary = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = ["bin", "dev", "etc", "home", "home/hull", "proc", "root", "run", "sbin",
                "sys", "tmp", "usr", "usr/bin", "usr/sbin", "var"]
        for d in dirs:
            mode = 0o1777 if d == "tmp" else 0o755
            tar_entry(tar, d, mode=mode, kind=tarfile.DIRTYPE)
        tar_entry(tar, "bin/busybox", binary, mode=0o755)
        for path in applets(busybox):
            rel = path.lstrip("/")
            if rel == "bin/busybox" or rel.split("/")[0] not in ("bin", "sbin", "usr"):
                continue
            tar_entry(tar, rel, kind=tarfile.SYMTYPE, link="/bin/busybox")
        tar_entry(tar, "etc/passwd", PASSWD.encode())
        tar_entry(tar, "etc/group", GROUP.encode())
        tar_entry(tar, "etc/hostname", b"busybox\n")
        for spec in symlinks:
            path, target = spec.split("=", 1)
            tar_entry(tar, path.strip("/"), kind=tarfile.SYMTYPE, link=target)
        if filler_mib:
            tar_entry(tar, "opt", mode=0o755, kind=tarfile.DIRTYPE)
            tar_entry(tar, "opt/filler", mode=0o755, kind=tarfile.DIRTYPE)
        for i in range(filler_mib):
            # Different bytes per file, the same in every build.
            block = hashlib.sha256(str(i).encode()).digest() * 128
            tar_entry(tar, f"opt/filler/f{i:05d}", block * 256)
    return buf.getvalue()


def blob(tar, data):
    digest = hashlib.sha256(data).hexdigest()
    tar_entry(tar, f"blobs/sha256/{digest}", data)
    return digest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--name", default="docker.io/library/busybox:hull")
    parser.add_argument("--busybox", default="/bin/busybox")
    parser.add_argument("--symlink", action="append", default=[], metavar="PATH=TARGET")
    parser.add_argument("--filler-mib", type=int, default=0, metavar="N")
    parser.add_argument("--cmd", default='["sh"]', metavar="JSON")
    args = parser.parse_args()
    if not os.path.exists(args.busybox):
        sys.exit(f"busybox-image: {args.busybox} not found (apt-get install busybox-static)")

    layer = build_layer(args.busybox, args.symlink, args.filler_mib)
    layer_digest = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": json.loads(args.cmd),
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "hull scripts/busybox-image.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()

    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar_entry(tar, "blobs", mode=0o755, kind=tarfile.DIRTYPE)
        tar_entry(tar, "blobs/sha256", mode=0o755, kind=tarfile.DIRTYPE)
        blob(tar, layer)
        config_digest = blob(tar, config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": f"sha256:{config_digest}", "size": len(config_bytes)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": f"sha256:{layer_digest}", "size": len(layer)}],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        manifest_digest = blob(tar, manifest_bytes)
        tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{manifest_digest}",
                "size": len(manifest_bytes),
                "annotations": {"io.containerd.image.name": args.name,
                                "org.opencontainers.image.ref.name": tag},
            }],
        }
        tar_entry(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        tar_entry(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        short = args.name.removeprefix("docker.io/library/").removeprefix("docker.io/")
        docker_manifest = [{"Config": f"blobs/sha256/{config_digest}",
                            "RepoTags": [short],
                            "Layers": [f"blobs/sha256/{layer_digest}"]}]
        tar_entry(tar, "manifest.json", json.dumps(docker_manifest).encode())
    os.replace(tmp, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
