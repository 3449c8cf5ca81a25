"""The API server's rules for the fake cluster, kept apart from its storage: resource types,
label selectors, defaulting, validation, patches and the field paths server-side apply owns.

They follow the real kube-apiserver where the product could be caught out by the difference
(omitted defaults, label syntax, a Deployment selector that does not match its template,
an immutable Job template); anything subtler is left out on purpose.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
Path = tuple[str, ...]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update")


class FakeKubeError(Exception):
    """An API error the server answers as a `Status` object with this code and reason."""

    def __init__(
        self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details: dict[str, Any] = dict(details or {})

    def status(self) -> Obj:
        """The `Status` body a real server sends for this error."""
        body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        body.update(message=self.message, reason=self.reason, code=self.code)
        if self.details:
            body["details"] = self.details
        return body


@dataclass(frozen=True)
class FakeResourceType:
    """One REST resource as discovery describes it (group "" is the core group)."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    generation: bool = False
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"

    @property
    def qualified(self) -> str:
        """`deployments.apps`, the name real error messages use."""
        return self.plural if not self.group else f"{self.plural}.{self.group}"

    def discovery(self) -> list[Obj]:
        """The APIResourceList entries of the resource and its subresources."""
        entry: Obj = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        entries = [entry]
        sub_kinds = {"exec": "PodExecOptions", "portforward": "PodPortForwardOptions"}
        for sub in self.subresources:
            verbs = {"status": ["get", "patch", "update"], "log": ["get"]}.get(
                sub, ["create", "get"]
            )
            entries.append(
                {
                    "name": f"{self.plural}/{sub}",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": sub_kinds.get(sub, self.kind),
                    "verbs": verbs,
                }
            )
        return entries


def _rt(
    group: str, version: str, plural: str, kind: str, *subs: str, **kw: Any
) -> FakeResourceType:
    return FakeResourceType(group, version, plural, kind.lower(), kind, subresources=subs, **kw)


RESOURCE_TYPES: tuple[FakeResourceType, ...] = (
    _rt("", "v1", "namespaces", "Namespace", "status", namespaced=False, short_names=("ns",)),
    _rt("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _rt("", "v1", "secrets", "Secret"),
    _rt("", "v1", "services", "Service", "status", short_names=("svc",)),
    _rt("", "v1", "pods", "Pod", "status", "log", "exec", "portforward", short_names=("po",)),
    _rt(
        "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", "status", short_names=("pvc",)
    ),
    _rt("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _rt("", "v1", "events", "Event", short_names=("ev",)),
    _rt(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        "status",
        generation=True,
        short_names=("deploy",),
    ),
    _rt(
        "apps", "v1", "statefulsets", "StatefulSet", "status", generation=True, short_names=("sts",)
    ),
    _rt("apps", "v1", "replicasets", "ReplicaSet", "status", generation=True, short_names=("rs",)),
    _rt("batch", "v1", "jobs", "Job", "status", generation=True),
    _rt("batch", "v1", "cronjobs", "CronJob", "status", generation=True, short_names=("cj",)),
    _rt(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        "status",
        generation=True,
        short_names=("hpa",),
    ),
    _rt(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        "status",
        generation=True,
        short_names=("pdb",),
    ),
    _rt("networking.k8s.io", "v1", "ingresses", "Ingress", "status", generation=True),
    _rt("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _rt("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
)
BY_PLURAL: dict[str, FakeResourceType] = {rt.plural: rt for rt in RESOURCE_TYPES}

# ---------------------------------------------------------------- label and field selectors


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present, value = self.key in labels, labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=" and "notin"


def parse_selector(text: str | None) -> list[Requirement]:
    """Parse the label selector syntax of `?labelSelector=` (`a=b,c!=d,e in (x,y),f,!g`)."""
    if not text:
        return []
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    requirements = []
    for raw in (part.strip() for part in parts):
        set_match = re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\((.*)\)", raw)
        if set_match:
            values = tuple(v.strip() for v in set_match.group(3).split(",") if v.strip())
            requirements.append(Requirement(set_match.group(1), set_match.group(2), values))
        elif "!=" in raw:
            key, value = raw.split("!=", 1)
            requirements.append(Requirement(key.strip(), "!=", (value.strip(),)))
        elif "=" in raw:
            key, value = raw.replace("==", "=").split("=", 1)
            requirements.append(Requirement(key.strip(), "=", (value.strip(),)))
        elif raw.startswith("!"):
            requirements.append(Requirement(raw[1:].strip(), "!exists"))
        elif re.fullmatch(r"[A-Za-z0-9./_-]+", raw):
            requirements.append(Requirement(raw, "exists"))
        else:
            raise FakeKubeError(400, "BadRequest", f"unable to parse requirement: {raw!r}")
    return requirements


def selector_of(spec_selector: Mapping[str, Any] | None) -> list[Requirement]:
    """The requirements of a LabelSelector object (matchLabels and matchExpressions)."""
    if not spec_selector:
        return []
    reqs = [Requirement(k, "=", (v,)) for k, v in (spec_selector.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in spec_selector.get("matchExpressions") or []:
        reqs.append(
            Requirement(expr["key"], ops[expr["operator"]], tuple(expr.get("values") or ()))
        )
    return reqs


def labels_match(requirements: Iterable[Requirement], labels: Mapping[str, str] | None) -> bool:
    return all(req.matches(labels or {}) for req in requirements)


def field_selector_match(text: str | None, obj: Obj) -> bool:
    """`?fieldSelector=` as equality or inequality on dotted paths (`status.phase=Running`)."""
    for raw in (part.strip() for part in (text or "").split(",") if part.strip()):
        negate = "!=" in raw
        path, wanted = raw.replace("==", "=").split("!=" if negate else "=", 1)
        value: Any = obj
        for key in path.strip().split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if (str(value if value is not None else "") == wanted.strip()) == negate:
            return False
    return True


# ---------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patches: lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # strategic-merge directives ($patch, $retainKeys) are not modelled
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Obj, operations: list[Obj]) -> Obj:
    """RFC 6902 JSON patch: add, remove, replace, test, copy and move."""
    doc: Any = copy.deepcopy(target)

    def split(pointer: str) -> list[str]:
        return [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]

    def parent(pointer: str) -> tuple[Any, str]:
        keys = split(pointer)
        node = doc
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        return node, keys[-1]

    def get(pointer: str) -> Any:
        node, key = parent(pointer)
        return node[int(key)] if isinstance(node, list) else node[key]

    def put(pointer: str, value: Any, insert: bool) -> None:
        node, key = parent(pointer)
        if isinstance(node, list):
            index = len(node) if key == "-" else int(key)
            if insert:
                node.insert(index, value)
            else:
                node[index] = value
        else:
            node[key] = value

    def remove(pointer: str) -> Any:
        node, key = parent(pointer)
        return node.pop(int(key)) if isinstance(node, list) else node.pop(key)

    try:
        for op in operations:
            kind, path = op["op"], op["path"]
            if kind == "add":
                put(path, copy.deepcopy(op["value"]), insert=True)
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                get(path)
                put(path, copy.deepcopy(op["value"]), insert=False)
            elif kind == "test" and get(path) != op["value"]:
                raise FakeKubeError(422, "Invalid", f"the server rejected our request: test {path}")
            elif kind in ("copy", "move"):
                value = copy.deepcopy(get(op["from"])) if kind == "copy" else remove(op["from"])
                put(path, value, insert=True)
    except (KeyError, IndexError, ValueError, TypeError) as error:
        raise FakeKubeError(422, "Invalid", f"the server rejected our request: {error}") from None
    if not isinstance(doc, dict):
        raise FakeKubeError(422, "Invalid", "the patch did not leave an object")
    return doc


# ---------------------------------------------------------------- field paths (managed fields)

_OWNED_METADATA = ("labels", "annotations", "ownerReferences", "finalizers")


def leaf_paths(obj: Obj) -> dict[Path, Any]:
    """The fields server-side apply tracks: maps are walked, lists and scalars are leaves
    (every list is atomic here, the real server merges some by key), status excluded."""
    found: dict[Path, Any] = {}

    def walk(node: Any, path: Path) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, (*path, key))
        else:
            found[path] = node

    for key, value in obj.items():
        if key in ("apiVersion", "kind", "status"):
            continue
        if key == "metadata":
            for meta_key in _OWNED_METADATA:
                if meta_key in (value or {}):
                    walk(value[meta_key], ("metadata", meta_key))
        else:
            walk(value, (key,))
    return found


def encode_fields(paths: Iterable[Path]) -> Obj:
    """FieldsV1 (`{"f:spec": {"f:replicas": {}}}`) of a set of leaf paths."""
    root: Obj = {}
    for path in sorted(paths):
        node = root
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return root


def decode_fields(fields: Mapping[str, Any] | None) -> set[Path]:
    found: set[Path] = set()

    def walk(node: Mapping[str, Any], path: Path) -> None:
        if not node and path:
            found.add(path)
        for key, value in node.items():
            if key.startswith("f:"):
                walk(value, (*path, key[2:]))

    walk(fields or {}, ())
    return found


def get_path(obj: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def set_path(obj: Obj, path: Path, value: Any) -> None:
    node = obj
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = copy.deepcopy(value)


def delete_path(obj: Obj, path: Path) -> None:
    """Remove a field and the maps it leaves empty (metadata itself stays)."""
    nodes: list[Obj] = [obj]
    for key in path[:-1]:
        child = nodes[-1].get(key)
        if not isinstance(child, dict):
            return
        nodes.append(child)
    nodes[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):
        if nodes[depth] or path[:depth] == ("metadata",):
            break
        nodes[depth - 1].pop(path[depth - 1], None)


# ---------------------------------------------------------------- defaulting

_WORKLOADS = ("deployments", "statefulsets", "replicasets", "jobs")


def _default_pod_spec(spec: Obj, *, restart: str | None) -> None:
    if restart:
        spec.setdefault("restartPolicy", restart)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        image = str(container.get("image", ""))
        tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
        pull = "Always" if not tagged or image.endswith(":latest") else "IfNotPresent"
        container.setdefault("imagePullPolicy", pull)
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        for port in container.get("ports", []):
            port.setdefault("protocol", "TCP")


FAKE_NODES = ("fake-node-a", "fake-node-b")


def scheduled_node(spec: Obj) -> str:
    """The node the scheduler binds a new pod to at once: the one a required node affinity
    names by ``metadata.name`` (as the DaemonSet controller pins pods), else the first."""
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in affinity.get("nodeSelectorTerms") or []:
        for field_ in term.get("matchFields") or []:
            if field_.get("key") == "metadata.name" and field_.get("operator") == "In":
                return str(field_["values"][0])
    return FAKE_NODES[0]


def apply_defaults(rt: FakeResourceType, obj: Obj, old: Obj | None, next_ip: int) -> None:
    """The defaults the real server writes into every stored object; a product that reads
    `spec.replicas` or `strategy` sees them whether or not its manifest set them."""
    meta, spec = obj.setdefault("metadata", {}), obj.get("spec")
    if rt.plural in _WORKLOADS and isinstance(spec, dict):
        template_spec = spec.setdefault("template", {}).setdefault("spec", {})
        _default_pod_spec(template_spec, restart=None if rt.plural == "jobs" else "Always")
    if rt.plural == "deployments" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxSurge", "25%")
            rolling.setdefault("maxUnavailable", "25%")
    elif rt.plural == "statefulsets" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("revisionHistoryLimit", 10)
        strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        if strategy.get("type") == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
        retention = spec.setdefault("persistentVolumeClaimRetentionPolicy", {})
        retention.setdefault("whenDeleted", "Retain")
        retention.setdefault("whenScaled", "Retain")
    elif rt.plural == "replicasets" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
    elif rt.plural == "jobs" and isinstance(spec, dict):
        for key, value in (
            ("backoffLimit", 6),
            ("completions", 1),
            ("parallelism", 1),
            ("completionMode", "NonIndexed"),
            ("suspend", False),
            ("podReplacementPolicy", "TerminatingOrFailed"),
        ):
            spec.setdefault(key, value)
        if old is not None:
            spec["selector"] = old["spec"].get("selector")
        if not spec.get("manualSelector"):
            uid, name = meta.get("uid", ""), meta.get("name", "")
            spec.setdefault(
                "selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            )
            labels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
            for prefix in ("batch.kubernetes.io/", ""):
                labels.setdefault(f"{prefix}controller-uid", uid)
                labels.setdefault(f"{prefix}job-name", name)
    elif rt.plural == "cronjobs" and isinstance(spec, dict):
        for key, value in (
            ("concurrencyPolicy", "Allow"),
            ("suspend", False),
            ("successfulJobsHistoryLimit", 3),
            ("failedJobsHistoryLimit", 1),
        ):
            spec.setdefault(key, value)
    elif rt.plural == "services":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName":
            kept = (old or {}).get("spec", {}).get("clusterIP")
            spec.setdefault("clusterIP", kept or f"10.96.{next_ip // 250}.{next_ip % 250 + 2}")
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports", []):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    elif rt.plural == "secrets":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None) or {}
        data = obj.setdefault("data", {}) if string_data else obj.get("data")
        for key, value in string_data.items():
            assert data is not None
            data[key] = base64.b64encode(str(value).encode()).decode()
    elif rt.plural == "pods":
        pod_spec = obj.setdefault("spec", {})
        _default_pod_spec(pod_spec, restart="Always")
        if old is None:
            pod_spec.setdefault("nodeName", scheduled_node(pod_spec))
    elif rt.plural == "namespaces":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
    elif rt.plural == "persistentvolumeclaims":
        obj.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")


# ---------------------------------------------------------------- validation

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def _label_problems(field: str, labels: Any) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for key, value in (labels or {}).items():
        prefix, _, name = str(key).rpartition("/")
        if (
            (prefix and not _DNS_SUBDOMAIN.fullmatch(prefix))
            or not _LABEL_NAME.fullmatch(name)
            or len(name) > 63
        ):
            problems.append(
                (
                    field,
                    f"Invalid value: {key!r}: name part must consist of "
                    "alphanumeric characters, '-', '_' or '.' (at most 63)",
                )
            )
        if (
            not isinstance(value, str)
            or (value and not _LABEL_NAME.fullmatch(value))
            or len(value) > 63
        ):
            problems.append(
                (
                    f"{field}[{key}]",
                    f"Invalid value: {value!r}: a valid label must be "
                    "an empty string or consist of alphanumeric characters, '-', '_' or "
                    "'.', and must start and end with an alphanumeric character "
                    "(at most 63)",
                )
            )
    return problems


def _containers_problems(field: str, pod_spec: Any) -> list[tuple[str, str]]:
    containers = (pod_spec or {}).get("containers") or []
    if not containers:
        return [(f"{field}.containers", "Required value")]
    problems = []
    for index, container in enumerate(containers):
        if not _DNS_LABEL.fullmatch(str(container.get("name", ""))):
            problems.append((f"{field}.containers[{index}].name", "Required value"))
        if not container.get("image"):
            problems.append((f"{field}.containers[{index}].image", "Required value"))
    return problems


def validate(rt: FakeResourceType, obj: Obj, old: Obj | None) -> None:
    """Refuse with 422 Invalid what the real server refuses and a product can easily send."""
    meta, spec = obj.get("metadata", {}), obj.get("spec") or {}
    name = str(meta.get("name", ""))
    problems: list[tuple[str, str]] = []
    pattern, limit = (
        (_DNS_1035, 63)
        if rt.plural == "services"
        else ((_DNS_LABEL, 63) if rt.plural == "namespaces" else (_DNS_SUBDOMAIN, 253))
    )
    if not pattern.fullmatch(name) or len(name) > limit:
        problems.append(
            (
                "metadata.name",
                f"Invalid value: {name!r}: a lowercase RFC 1123 name (at most {limit} characters)",
            )
        )
    problems += _label_problems("metadata.labels", meta.get("labels"))
    if rt.plural in _WORKLOADS:
        template = spec.get("template") or {}
        template_labels = (template.get("metadata") or {}).get("labels") or {}
        problems += _label_problems("spec.template.metadata.labels", template_labels)
        problems += _containers_problems("spec.template.spec", template.get("spec"))
        selector = selector_of(spec.get("selector"))
        if not selector and rt.plural != "jobs":
            problems.append(("spec.selector", "Required value"))
        elif not labels_match(selector, template_labels):
            problems.append(
                (
                    "spec.template.metadata.labels",
                    f"Invalid value: {template_labels}: "
                    "`selector` does not match template `labels`",
                )
            )
        if old is not None and spec.get("selector") != (old.get("spec") or {}).get("selector"):
            problems.append(("spec.selector", "Invalid value: field is immutable"))
    if rt.plural == "jobs":
        restart = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
        if restart not in ("Never", "OnFailure"):
            problems.append(
                (
                    "spec.template.spec.restartPolicy",
                    'Required value: valid values: "OnFailure", "Never"',
                )
            )
        if old is not None and spec.get("template") != old["spec"].get("template"):
            problems.append(("spec.template", "Invalid value: field is immutable"))
    if rt.plural == "pods":
        problems += _containers_problems("spec", spec)
    if rt.plural == "secrets":
        for key, value in (obj.get("data") or {}).items():
            try:
                base64.b64decode(str(value), validate=True)
            except ValueError:
                problems.append((f"data[{key}]", "Invalid value: illegal base64 data"))
    if problems:
        text = ", ".join(f"{field}: {message}" for field, message in problems)
        causes = [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in problems]
        raise FakeKubeError(
            422,
            "Invalid",
            f'{rt.kind}{"." + rt.group if rt.group else ""} "{name}" is invalid: {text}',
            {"name": name, "group": rt.group, "kind": rt.kind, "causes": causes},
        )
