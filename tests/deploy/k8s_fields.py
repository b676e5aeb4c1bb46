"""Field-level validation of Kubernetes objects against the official Python client's models.

No API server is needed: every model class of the `kubernetes` package lists its fields
(``attribute_map``) and their types (``openapi_types``), generated from the Kubernetes
OpenAPI schema. This catches misspelt or misplaced keys and wrong scalar types; it does
not check required fields or value formats.
"""

from __future__ import annotations

import re
from typing import Any

KINDS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("apps/v1", "Deployment"): "V1Deployment",
}


def _models() -> Any:
    from kubernetes.client import models

    return models


def problems(value: Any, type_name: str, where: str = "$") -> list[str]:
    """Every key or scalar in ``value`` that the model ``type_name`` does not allow."""
    list_of = re.fullmatch(r"(?:list|List)\[(.+)\]", type_name)
    if list_of:
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return [
            p for i, item in enumerate(value) for p in problems(item, list_of[1], f"{where}[{i}]")
        ]
    dict_of = re.fullmatch(r"(?:dict|Dict)\((?:str), (.+)\)|(?:dict|Dict)\[str, (.+)\]", type_name)
    if dict_of:
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {type(value).__name__}"]
        inner = dict_of[1] or dict_of[2]
        return [p for k, v in value.items() for p in problems(v, inner, f"{where}.{k}")]
    scalars: dict[str, tuple[type, ...]] = {
        "str": (str,),
        "int": (int,),
        "bool": (bool,),
        "float": (int, float),
        "datetime": (str,),
        "date": (str,),
        "bytearray": (str,),
    }
    if type_name == "object":
        return []
    if type_name in scalars:
        ok = isinstance(value, scalars[type_name])
        if type_name in {"int", "float"} and isinstance(value, bool):
            ok = False
        return [] if ok else [f"{where}: expected {type_name}, got {value!r}"]
    model = getattr(_models(), type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping, got {type(value).__name__}"]
    by_json_key = {json_key: attr for attr, json_key in model.attribute_map.items()}
    found = []
    for key, item in value.items():
        if key not in by_json_key:
            found.append(f"{where}.{key}: not a field of {type_name}")
            continue
        found += problems(item, model.openapi_types[by_json_key[key]], f"{where}.{key}")
    return found


def object_problems(obj: dict[str, Any]) -> list[str]:
    """Problems of a whole manifest; kinds without a model here are not checked."""
    type_name = KINDS.get((str(obj.get("apiVersion")), str(obj.get("kind"))))
    if type_name is None:
        return [f"no model for {obj.get('apiVersion')} {obj.get('kind')}"]
    return problems(obj, type_name, obj["kind"])
