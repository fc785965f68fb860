#!/usr/bin/env python3
"""Build an example model image (and its model artifacts) without Docker, and push them.

    sudo python3 examples/models/build.py sklearn-iris --push 127.0.0.1:5000/examples
    sudo python3 examples/models/build.py minilm-embedding --artifacts 1,2 \\
        --push registry.example.com/models --pusher skopeo

Writes OCI image layouts under ``--out`` (``<name>/`` for the image, tag ``--tag``;
``<name>-model/`` for the artifacts, tags ``v1``, ``v2``) and, with ``--push PREFIX``,
pushes them as ``PREFIX/<name>:<tag>`` and ``PREFIX/<name>-model:v<N>``. Prints a JSON
summary: digests, sizes, and seconds per step. Needs root, mmdebstrap and network access
to a Debian mirror and PyPI on the first build; later builds come from ``--cache-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from modelbuild.examples import EXAMPLES, build_example
from modelbuild.oci import Layout
from modelbuild.push import RegistryPusher, parse_reference, skopeo_copy
from modelbuild.rootfs import DEFAULT_CACHE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example", choices=sorted(EXAMPLES))
    parser.add_argument("--out", default="build/models", help="where the OCI layouts go")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE)
    parser.add_argument("--tag", default="1", help="the image's tag")
    parser.add_argument(
        "--weights",
        choices=["layer", "none"],
        help="bake the weights into the image as its last layer, or leave them to the "
        "artifact (default: layer for sklearn-iris, none for minilm-embedding)",
    )
    parser.add_argument("--weights-version", default="1")
    parser.add_argument(
        "--artifacts", default="1,2", help="model artifact versions to build ('' for none)"
    )
    parser.add_argument("--extra-wheels", help="a requirements.lock of wheels for an extra layer")
    parser.add_argument("--push", metavar="REGISTRY/PREFIX", help="push image and artifacts")
    parser.add_argument("--pusher", choices=["builtin", "skopeo"], default="builtin")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP / no TLS verify")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the hermetic build needs root (mmdebstrap --mode=root, chroot)")
    versions = [v for v in args.artifacts.split(",") if v]
    result = build_example(
        args.example,
        args.out,
        cache_dir=args.cache_dir,
        weights=args.weights,
        weights_version=args.weights_version,
        artifact_versions=versions,
        image_tag=args.tag,
        extra_wheels_lock=args.extra_wheels,
    )
    summary = result.summary()
    if args.push:
        started = time.monotonic()
        targets = [(result.image_layout, args.tag, f"{args.push}/{args.example}:{args.tag}")]
        targets += [
            (result.artifact_layout, f"v{v}", f"{args.push}/{args.example}-model:v{v}")
            for v in versions
        ]
        pushed = []
        for layout_path, ref_name, destination in targets:
            layout = Layout(layout_path)
            if args.pusher == "skopeo":
                skopeo_copy(layout, ref_name, destination, tls_verify=not args.insecure)
                pushed.append({"reference": destination, "digest": layout.resolve(ref_name).digest})
                continue
            host, repository, tag = parse_reference(destination)
            scheme = "http" if args.insecure or host.startswith("127.") else "https"
            done = RegistryPusher(f"{scheme}://{host}").push(layout, ref_name, repository, tag)
            pushed.append(vars(done))
        summary["pushed"] = pushed
        summary["seconds"]["push"] = round(time.monotonic() - started, 2)
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
