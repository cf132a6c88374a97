"""Renders charts/bedrock-broker offline with Helm's own engine.

The engine is Helm v4's Go SDK, loaded through the PyPI package
`helm-python-sdk` (a C shared library, no `helm` binary and no network).
`lookup` returns nothing offline, exactly as in `helm template`.

    python hack/chart.py render [-f VALUES.yaml]... [--set-json JSON]
        [--name NAME] [--namespace NS] [--no-tests]
    python hack/chart.py alerts [-f VALUES.yaml]...   # the rule groups only
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "bedrock-broker"
RELEASE = "bedrock-broker"
NAMESPACE = "bedrock-broker"


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def render_files(values: dict | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text (Helm's engine; raises helm.HelmError)."""
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values=values or {}, name=name, namespace=namespace, is_install=True)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping: PyYAML
    (like kubectl's decoder) silently keeps the last, the API server's
    strict field validation and other tools do not, and which one wins
    can decide what a selector matches."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} written twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def render(
    values: dict | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    tests: bool = True,
) -> list[dict[str, Any]]:
    """Every rendered object, in template order (NOTES.txt left out)."""
    objs: list[dict[str, Any]] = []
    for path, text in sorted(render_files(values, name=name, namespace=namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        if not tests and "/templates/tests/" in path:
            continue
        for doc in yaml.load_all(text, Loader=_StrictLoader):
            if doc:
                doc.setdefault("metadata", {})
                objs.append(doc)
    return objs


def notes(values: dict | None = None, **kw: Any) -> str:
    files = render_files(values, **kw)
    return next(v for k, v in files.items() if k.endswith("NOTES.txt"))


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (PromQL, scripts), like hand-written YAML."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def dump(objs: list[dict[str, Any]], header: str = "") -> str:
    body = "---\n".join(to_yaml(o) for o in objs)
    return header + "---\n" + body


def load_values(files: list[str], set_json: list[str]) -> dict:
    values: dict = {}
    for f in files:
        values = merge(values, yaml.safe_load(Path(f).read_text()) or {})
    for j in set_json:
        values = merge(values, json.loads(j))
    return values


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["render", "alerts", "notes"])
    p.add_argument("-f", "--values", action="append", default=[])
    p.add_argument("--set-json", action="append", default=[])
    p.add_argument("--name", default=RELEASE)
    p.add_argument("--namespace", default=NAMESPACE)
    p.add_argument("--no-tests", action="store_true", help="leave out the helm test hook pod")
    p.add_argument("--header", default="")
    a = p.parse_args(argv)
    values = load_values(a.values, a.set_json)
    try:
        if a.command == "notes":
            sys.stdout.write(notes(values, name=a.name, namespace=a.namespace))
            return 0
        objs = render(values, name=a.name, namespace=a.namespace, tests=not a.no_tests)
    except helm.HelmError as e:
        print(f"chart.py: {e}", file=sys.stderr)
        return 1
    if a.command == "alerts":
        rules = [o for o in objs if o.get("kind") == "PrometheusRule"]
        if len(rules) != 1:
            print("chart.py: no PrometheusRule rendered (set metrics.prometheusRule.enabled=true)", file=sys.stderr)
            return 1
        sys.stdout.write(a.header + to_yaml(rules[0]["spec"]))
        return 0
    sys.stdout.write(dump(objs, a.header))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
