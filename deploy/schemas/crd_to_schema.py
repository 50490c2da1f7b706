"""Turn a CustomResourceDefinition into the JSON schema tests/test_deploy.py validates with.

    python deploy/schemas/crd_to_schema.py CRD.yaml SOURCE > deploy/schemas/NAME.json

NAME is <group>_<kind in lower case>_<version>.

The schema is the CRD's ``openAPIV3Schema`` for its storage version, made into JSON Schema as
the API server applies it under strict field validation:

- an object that declares ``properties`` and neither ``additionalProperties`` nor
  ``x-kubernetes-preserve-unknown-fields`` refuses other fields (the API server would prune or,
  with ``kubectl apply`` 1.27+, reject them), so a misspelt field fails the test;
- descriptions are dropped, and identical sub-schemas of 2,000 characters or more (the copies
  of the Pod and Container schemas an InferenceService embeds for each framework) are kept once
  under ``$defs`` and referenced, which changes no answer of the schema.

SOURCE (repository@commit:path) is recorded in ``$comment``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from typing import Any

import yaml

_MIN_SHARED = 2000
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_ONES = ("items", "additionalProperties", "not")


def _key(node: Any) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in schema.items():
        if name == "description":
            continue
        if name in _SCHEMA_MAPS:
            out[name] = {k: _strict(v) for k, v in value.items()}
        elif name in _SCHEMA_LISTS:
            out[name] = [_strict(v) for v in value]
        elif name in _SCHEMA_ONES and isinstance(value, dict):
            out[name] = _strict(value)
        else:
            out[name] = value
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _subschemas(schema: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for name, value in schema.items():
        if name in _SCHEMA_MAPS:
            found.extend(value.values())
        elif name in _SCHEMA_LISTS:
            found.extend(value)
        elif name in _SCHEMA_ONES and isinstance(value, dict):
            found.append(value)
    return found


def _share(root: dict[str, Any]) -> dict[str, Any]:
    counts: Counter[str] = Counter()

    def count(schema: dict[str, Any]) -> None:
        counts[_key(schema)] += 1
        for sub in _subschemas(schema):
            count(sub)

    count(root)
    defs: dict[str, Any] = {}
    names: dict[str, str] = {}

    def rewrite(schema: dict[str, Any], top: bool = False) -> dict[str, Any]:
        key = _key(schema)
        if not top and counts[key] > 1 and len(key) >= _MIN_SHARED:
            if key not in names:
                names[key] = "s" + hashlib.sha256(key.encode()).hexdigest()[:12]
                defs[names[key]] = children(schema)
            return {"$ref": "#/$defs/" + names[key]}
        return children(schema)

    def children(schema: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in schema.items():
            if name in _SCHEMA_MAPS:
                out[name] = {k: rewrite(v) for k, v in value.items()}
            elif name in _SCHEMA_LISTS:
                out[name] = [rewrite(v) for v in value]
            elif name in _SCHEMA_ONES and isinstance(value, dict):
                out[name] = rewrite(value)
            else:
                out[name] = value
        return out

    shared = rewrite(root, top=True)
    if defs:
        shared["$defs"] = dict(sorted(defs.items()))
    return shared


def convert(crd: dict[str, Any], source: str) -> dict[str, Any]:
    """The JSON schema of the CRD's storage version."""
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    spec = crd["spec"]
    schema = _share(_strict(version["schema"]["openAPIV3Schema"]))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"openAPIV3Schema of {spec['group']}/{version['name']} {spec['names']['kind']}"
        f" from {source}, converted by deploy/schemas/crd_to_schema.py",
        "x-kubernetes-group-version-kind": {
            "group": spec["group"],
            "version": version["name"],
            "kind": spec["names"]["kind"],
        },
        **schema,
    }


def main() -> None:
    path, source = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as handle:
        crd = yaml.safe_load(handle)
    json.dump(convert(crd, source), sys.stdout, sort_keys=True, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
