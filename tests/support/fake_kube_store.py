"""The object store of the fake Kubernetes API server: every write goes through here, so the
server fields (uid, resourceVersion, generation, managedFields), the status rules, server-side
apply and garbage collection behave the same whether a request came over HTTP or from the
fake controllers in Python.

Thread-safe: one lock guards the store; every method hands out deep copies.
"""

from __future__ import annotations

import builtins
import copy
import random
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from support.fake_kube_rules import (
    BY_PLURAL,
    FakeKubeError,
    FakeResourceType,
    Obj,
    Path,
    apply_defaults,
    decode_fields,
    delete_path,
    encode_fields,
    field_selector_match,
    json_patch,
    labels_match,
    leaf_paths,
    merge_patch,
    parse_selector,
    set_path,
    validate,
)

APPLY = "application/apply-patch+yaml"
MERGE_PATCH_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
JSON_PATCH = "application/json-patch+json"

_SERVER_META = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
)
_INITIAL_STATUS: dict[str, Obj] = {
    "pods": {"phase": "Pending", "qosClass": "BestEffort"},
    "namespaces": {"phase": "Active"},
    "persistentvolumeclaims": {"phase": "Pending"},
    "services": {"loadBalancer": {}},
    "ingresses": {"loadBalancer": {}},
    "statefulsets": {"replicas": 0, "availableReplicas": 0},
    "replicasets": {"replicas": 0},
    "horizontalpodautoscalers": {"currentReplicas": 0, "desiredReplicas": 0},
    "poddisruptionbudgets": {
        "disruptionsAllowed": 0,
        "currentHealthy": 0,
        "desiredHealthy": 0,
        "expectedPods": 0,
    },
}
_MISSING = object()


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resource_type(resource: str) -> FakeResourceType:
    """The resource type of a plural name (`deployments`); unknown names are a 404."""
    rt = BY_PLURAL.get(resource)
    if rt is None:
        raise FakeKubeError(404, "NotFound", "the server could not find the requested resource")
    return rt


def not_found(rt: FakeResourceType, name: str) -> FakeKubeError:
    return FakeKubeError(
        404,
        "NotFound",
        f'{rt.qualified} "{name}" not found',
        {"name": name, "group": rt.group, "kind": rt.plural},
    )


def _conflict(rt: FakeResourceType, name: str) -> FakeKubeError:
    return FakeKubeError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        {"name": name, "group": rt.group, "kind": rt.plural},
    )


def _entry_paths(entry: Mapping[str, Any]) -> set[Path]:
    return decode_fields(entry.get("fieldsV1"))


def _entry(manager: str, operation: str, api_version: str, paths: set[Path]) -> Obj:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": encode_fields(paths),
    }


def _comparable(obj: Obj) -> Obj:
    stripped = copy.deepcopy(obj)
    for key in ("managedFields", "resourceVersion"):
        stripped.get("metadata", {}).pop(key, None)
    return stripped


class FakeKubeStore:
    """Objects by resource, namespace and name, with the real server's write rules."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {rt: {} for rt in BY_PLURAL}
        self._revision = 0
        self._service_ips = 0
        self._logs: dict[tuple[str, str, str], str] = {}

    # ------------------------------------------------------------ Python API (tests, controllers)

    def create_namespace(self, name: str) -> Obj:
        """Create a namespace (the real server refuses namespaced objects without one)."""
        return self.create("namespaces", {"metadata": {"name": name}}, manager="fake-test")

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        """The stored object, or None; `namespace` is "" for cluster-scoped resources."""
        with self._lock:
            found = self._objects[resource_type(resource).plural].get((namespace, name))
            return copy.deepcopy(found) if found else None

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Obj]:
        """Objects of a resource (all namespaces when `namespace` is None), sorted by key."""
        requirements = parse_selector(label_selector)
        with self._lock:
            table = self._objects[resource_type(resource).plural]
            return [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(table.items())
                if (namespace is None or ns == namespace)
                and labels_match(requirements, obj["metadata"].get("labels"))
                and field_selector_match(field_selector, obj)
            ]

    def create(
        self,
        resource: str,
        obj: Obj,
        *,
        namespace: str = "",
        manager: str = "fake-test",
        dry_run: bool = False,
    ) -> Obj:
        with self._lock:
            return copy.deepcopy(
                self._create(resource_type(resource), namespace, obj, manager, dry_run)
            )

    def replace(
        self,
        resource: str,
        namespace: str,
        name: str,
        obj: Obj,
        *,
        manager: str = "fake-test",
        dry_run: bool = False,
        subresource: str = "",
    ) -> Obj:
        """PUT: the whole object (or its status with `subresource="status"`)."""
        rt = resource_type(resource)
        with self._lock:
            old = self._require(rt, namespace, name)
            meta = obj.get("metadata") or {}
            if meta.get("name") and meta["name"] != name:
                raise FakeKubeError(
                    400,
                    "BadRequest",
                    f"the name of the object ({meta['name']}) "
                    f"does not match the name on the URL ({name})",
                )
            version = meta.get("resourceVersion")
            if version and version != old["metadata"]["resourceVersion"]:
                raise _conflict(rt, name)
            if subresource == "status":
                new = copy.deepcopy(old)
                new["status"] = copy.deepcopy(obj.get("status", {}))
                return copy.deepcopy(self._write(rt, old, new, dry_run))
            new = copy.deepcopy(obj)
            new["metadata"] = meta = copy.deepcopy(meta)
            for key in (*_SERVER_META, "name", "namespace"):
                if key in old["metadata"]:
                    meta[key] = copy.deepcopy(old["metadata"][key])
            new["apiVersion"], new["kind"] = rt.api_version, rt.kind
            if "status" in rt.subresources:
                new["status"] = copy.deepcopy(old.get("status", {}))
            return copy.deepcopy(self._update(rt, old, new, manager, dry_run))

    def patch(
        self,
        resource: str,
        namespace: str,
        name: str,
        body: Any,
        content_type: str,
        *,
        manager: str = "",
        force: bool = False,
        dry_run: bool = False,
        subresource: str = "",
    ) -> Obj:
        """PATCH in one of the four content types; server-side apply needs a field manager."""
        rt = resource_type(resource)
        content_type = content_type.split(";")[0].strip()
        with self._lock:
            if content_type == APPLY:
                if not manager:
                    raise FakeKubeError(
                        400, "BadRequest", "fieldManager is required for apply requests"
                    )
                if subresource:
                    raise FakeKubeError(400, "BadRequest", "the fake applies main resources only")
                return copy.deepcopy(
                    self._apply(rt, namespace, name, body, manager, force, dry_run)
                )
            old = self._require(rt, namespace, name)
            if content_type in MERGE_PATCH_TYPES:
                if not isinstance(body, dict):
                    raise FakeKubeError(400, "BadRequest", "a merge patch must be a JSON object")
                patched = merge_patch(old, body)
            elif content_type == JSON_PATCH:
                if not isinstance(body, list):
                    raise FakeKubeError(400, "BadRequest", "a JSON patch must be a JSON array")
                patched = json_patch(old, body)
            else:
                raise FakeKubeError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - "
                    f"accepted media types include: {APPLY}, {JSON_PATCH}, "
                    f"{', '.join(MERGE_PATCH_TYPES)}",
                )
            version = (patched.get("metadata") or {}).get("resourceVersion")
            if version and version != old["metadata"]["resourceVersion"]:
                raise _conflict(rt, name)
            if subresource == "status":
                new = copy.deepcopy(old)
                new["status"] = patched.get("status", {})
                return copy.deepcopy(self._write(rt, old, new, dry_run))
            for key in (*_SERVER_META, "name", "namespace"):
                patched.setdefault("metadata", {}).pop(key, None)
                if key in old["metadata"]:
                    patched["metadata"][key] = copy.deepcopy(old["metadata"][key])
            patched["apiVersion"], patched["kind"] = rt.api_version, rt.kind
            if "status" in rt.subresources:
                patched["status"] = copy.deepcopy(old.get("status", {}))
            return copy.deepcopy(self._update(rt, old, patched, manager or "fake-patch", dry_run))

    def put_status(self, resource: str, namespace: str, name: str, status: Obj) -> Obj:
        """Replace an object's status (what a controller does through `/status`)."""
        return self.replace(resource, namespace, name, {"status": status}, subresource="status")

    def delete(
        self,
        resource: str,
        namespace: str,
        name: str,
        *,
        propagation: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """Delete an object and, per propagation policy, its dependents. Jobs orphan their pods
        unless told otherwise, as batch/v1 does on the real server."""
        rt = resource_type(resource)
        with self._lock:
            old = self._require(rt, namespace, name)
            if not dry_run:
                self._delete(rt, namespace, name, propagation)
            return copy.deepcopy(old)

    def set_pod_log(self, namespace: str, pod: str, container: str, text: str) -> None:
        with self._lock:
            self._logs[(namespace, pod, container)] = text

    def append_pod_log(self, namespace: str, pod: str, container: str, text: str) -> None:
        with self._lock:
            key = (namespace, pod, container)
            self._logs[key] = self._logs.get(key, "") + text

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        with self._lock:
            return self._logs.get((namespace, pod, container), "")

    @property
    def resource_version(self) -> str:
        """The newest resourceVersion (list responses carry it)."""
        with self._lock:
            return str(self._revision)

    # ------------------------------------------------------------ internals (lock held)

    def _require(self, rt: FakeResourceType, namespace: str, name: str) -> Obj:
        found = self._objects[rt.plural].get((namespace if rt.namespaced else "", name))
        if found is None:
            raise not_found(rt, name)
        return found

    def _create(
        self,
        rt: FakeResourceType,
        namespace: str,
        body: Obj,
        manager: str,
        dry_run: bool,
        apply_paths: set[Path] | None = None,
    ) -> Obj:
        if not isinstance(body, dict):
            raise FakeKubeError(400, "BadRequest", "the body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            given = meta.get("namespace")
            if given and namespace and given != namespace:
                raise FakeKubeError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does "
                    "not match the namespace sent on the request",
                )
            namespace = namespace or given or ""
            if ("", namespace) not in self._objects["namespaces"]:
                raise not_found(BY_PLURAL["namespaces"], namespace)
            meta["namespace"] = namespace
        else:
            namespace = ""
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise FakeKubeError(
                    422,
                    "Invalid",
                    f"{rt.kind} is invalid: metadata.name: "
                    "Required value: name or generateName is required",
                )
            alphabet = "bcdfghjklmnpqrstvwxz2456789"
            meta["name"] = meta["generateName"] + "".join(random.choices(alphabet, k=5))
        if (namespace, meta["name"]) in self._objects[rt.plural]:
            raise FakeKubeError(
                409,
                "AlreadyExists",
                f'{rt.qualified} "{meta["name"]}" already exists',
                {"name": meta["name"], "group": rt.group, "kind": rt.plural},
            )
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        for key in _SERVER_META:
            meta.pop(key, None)
        meta["uid"], meta["creationTimestamp"] = str(uuid.uuid4()), now_rfc3339()
        if rt.generation:
            meta["generation"] = 1
        if "status" in rt.subresources:
            obj["status"] = copy.deepcopy(_INITIAL_STATUS.get(rt.plural, {}))
        self._service_ips += rt.plural == "services"
        apply_defaults(rt, obj, None, self._service_ips)
        validate(rt, obj, None)
        operation = "Update" if apply_paths is None else "Apply"
        paths = set(leaf_paths(obj)) if apply_paths is None else apply_paths
        meta["managedFields"] = [_entry(manager, operation, rt.api_version, paths)]
        if not dry_run:
            self._revision += 1
            meta["resourceVersion"] = str(self._revision)
            self._objects[rt.plural][(namespace, meta["name"])] = obj
        return obj

    def _apply(
        self,
        rt: FakeResourceType,
        namespace: str,
        name: str,
        body: Any,
        manager: str,
        force: bool,
        dry_run: bool,
    ) -> Obj:
        if not isinstance(body, dict):
            raise FakeKubeError(400, "BadRequest", "the applied configuration must be an object")
        if body.get("apiVersion") != rt.api_version or body.get("kind") != rt.kind:
            raise FakeKubeError(
                400,
                "BadRequest",
                f"the applied configuration has apiVersion "
                f"{body.get('apiVersion')!r} kind {body.get('kind')!r}; the URL "
                f"names {rt.api_version} {rt.kind}",
            )
        meta = body.get("metadata") or {}
        if meta.get("name") != name:
            raise FakeKubeError(
                400,
                "BadRequest",
                f"the name of the object "
                f"({meta.get('name')}) does not match the name on the URL "
                f"({name})",
            )
        config = leaf_paths(body)
        old = self._objects[rt.plural].get((namespace if rt.namespaced else "", name))
        if old is None:
            return self._create(rt, namespace, body, manager, dry_run, apply_paths=set(config))
        version = meta.get("resourceVersion")
        if version and version != old["metadata"]["resourceVersion"]:
            raise _conflict(rt, name)
        live = leaf_paths(old)
        entries = copy.deepcopy(old["metadata"].get("managedFields") or [])
        conflicts: list[tuple[str, str, Path]] = []
        for entry in entries:
            if entry["manager"] == manager:
                continue
            for path in sorted(_entry_paths(entry) & config.keys()):
                if live.get(path, _MISSING) != config[path]:
                    conflicts.append((entry["manager"], entry.get("apiVersion", ""), path))
        if conflicts and not force:
            causes = [
                {
                    "reason": "FieldManagerConflict",
                    "field": "." + ".".join(path),
                    "message": f'conflict with "{who}" using {version}',
                }
                for who, version, path in conflicts
            ]
            fields = "\n".join(f"- {c['message']}: {c['field']}" for c in causes)
            raise FakeKubeError(
                409,
                "Conflict",
                f"Apply failed with {len(conflicts)} "
                f"conflict{'s' if len(conflicts) > 1 else ''}: {fields}",
                {"name": name, "group": rt.group, "kind": rt.plural, "causes": causes},
            )
        taken = {path for _, _, path in conflicts}
        previous: set[Path] = set()
        others: set[Path] = set()
        for entry in entries:
            if entry["manager"] == manager and entry["operation"] == "Apply":
                previous = _entry_paths(entry)
            else:
                paths = _entry_paths(entry) - taken
                entry["fieldsV1"] = encode_fields(paths)
                others |= paths
        new = copy.deepcopy(old)
        for path in previous - config.keys() - others:
            delete_path(new, path)
        for path, value in config.items():
            set_path(new, path, value)
        return self._update(
            rt,
            old,
            new,
            manager,
            dry_run,
            entries=entries,
            applied=(set(config), str(body["apiVersion"])),
        )

    def _update(
        self,
        rt: FakeResourceType,
        old: Obj,
        new: Obj,
        manager: str,
        dry_run: bool,
        entries: builtins.list[Obj] | None = None,
        applied: tuple[set[Path], str] | None = None,
    ) -> Obj:
        apply_defaults(rt, new, old, self._service_ips)
        validate(rt, new, old)
        if rt.generation and new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if entries is None:
            entries = copy.deepcopy(old["metadata"].get("managedFields") or [])
        new_paths = leaf_paths(new)
        operation = "Apply" if applied else "Update"
        if applied:
            mine = applied[0]
        else:
            before = leaf_paths(old)
            mine = {p for p, v in new_paths.items() if before.get(p, _MISSING) != v}
            for entry in entries:
                entry["fieldsV1"] = encode_fields(_entry_paths(entry) - mine)
        kept = []
        found = False
        for entry in entries:
            if entry["manager"] == manager and entry["operation"] == operation:
                found = True
                paths = mine if applied else _entry_paths(entry) | mine
                if encode_fields(paths) != entry.get("fieldsV1"):
                    entry["time"] = now_rfc3339()
                entry.update(
                    fieldsV1=encode_fields(paths),
                    apiVersion=applied[1] if applied else entry.get("apiVersion", rt.api_version),
                )
            entry["fieldsV1"] = encode_fields(_entry_paths(entry) & new_paths.keys())
            if entry["fieldsV1"]:
                kept.append(entry)
        if not found and mine & new_paths.keys():
            version = applied[1] if applied else rt.api_version
            kept.append(_entry(manager, operation, version, mine & new_paths.keys()))
        unchanged = _comparable(new) == _comparable(old) and [
            (e["manager"], e["operation"], e["fieldsV1"]) for e in kept
        ] == [
            (e["manager"], e["operation"], e["fieldsV1"])
            for e in old["metadata"].get("managedFields") or []
        ]
        if unchanged:
            return old
        new["metadata"]["managedFields"] = kept
        return self._write(rt, old, new, dry_run)

    def _write(self, rt: FakeResourceType, old: Obj, new: Obj, dry_run: bool) -> Obj:
        if _comparable(new) == _comparable(old) and new["metadata"].get("managedFields") == old[
            "metadata"
        ].get("managedFields"):
            return old
        if dry_run:
            return new
        self._revision += 1
        new["metadata"]["resourceVersion"] = str(self._revision)
        key = (new["metadata"].get("namespace", ""), new["metadata"]["name"])
        self._objects[rt.plural][key] = new
        return new

    def _delete(self, rt: FakeResourceType, namespace: str, name: str, policy: str | None) -> None:
        old = self._objects[rt.plural].pop((namespace, name))
        self._revision += 1
        if rt.plural == "pods":
            for log_key in [k for k in self._logs if k[:2] == (namespace, name)]:
                del self._logs[log_key]
        if rt.plural == "namespaces":
            for plural, table in self._objects.items():
                for key in [k for k in table if k[0] == name]:
                    if key in table:
                        self._delete(BY_PLURAL[plural], key[0], key[1], "Background")
            return
        if policy is None:
            policy = "Orphan" if rt.plural == "jobs" else "Background"
        uid = old["metadata"]["uid"]
        for plural, table in self._objects.items():
            for (ns, dep_name), obj in list(table.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if (ns, dep_name) not in table or not any(r.get("uid") == uid for r in refs):
                    continue
                if policy == "Orphan":
                    new = copy.deepcopy(obj)
                    kept_refs = [r for r in refs if r.get("uid") != uid]
                    if kept_refs:
                        new["metadata"]["ownerReferences"] = kept_refs
                    else:
                        new["metadata"].pop("ownerReferences")
                    self._update(BY_PLURAL[plural], obj, new, "generic-garbage-collector", False)
                else:
                    self._delete(BY_PLURAL[plural], ns, dep_name, "Background")
