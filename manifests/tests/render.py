#!/usr/bin/env python3
"""Renders the certvol Helm chart and prints every object as one JSON list on stdout.

Usage: render.py [KEY=VALUE ...]   (KEY is a dotted values path, VALUE is parsed as YAML,
so `certManager.tokenRequest=true` sets a boolean). The release is named certvol in
namespace certvol, as check_chart.py renders it. Used by the e2e container tier
(e2e/src/container/chart.rs), which runs the DaemonSet's pod exactly as rendered.
"""

import json
import sys

from check_chart import objects, render
import yaml


def values_from(pairs):
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            sys.exit(f"render.py: expected KEY=VALUE, got {pair!r}")
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return values


if __name__ == "__main__":
    json.dump(objects(render(values_from(sys.argv[1:]))), sys.stdout)
