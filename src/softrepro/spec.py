"""Paper specs, scales and the dataset registry: loading, validation, resolution.

Every YAML under ``configs/`` is checked against its JSON schema in
``configs/schemas``; an error names the file and the field (``claims[1].published``)
so a malformed spec is fixed in one look.  ``resolve_experiment`` merges an
experiment's per-scale overrides, which is all the engine ever reads.
"""
from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCALES = ("smoke", "cpu", "paper")


class SpecError(ValueError):
    """A config file is malformed; the message names the file and the field."""

    def __init__(self, path: Path | str, where: str, message: str):
        self.path, self.where = str(path), where
        super().__init__(f"{path}: {where}: {message}")


def repo_root() -> Path:
    """The project root: the nearest parent holding configs/config.yaml (cwd first)."""
    for base in (Path.cwd(), *Path.cwd().parents):
        if (base / "configs" / "config.yaml").is_file():
            return base
    raise FileNotFoundError("not inside a softrepro checkout (no configs/config.yaml found)")


def _field_path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@lru_cache(maxsize=None)
def _schema(root: str, name: str) -> dict:
    return json.loads((Path(root) / "configs" / "schemas" / f"{name}.schema.json").read_text())


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key written twice in one mapping (plain YAML keeps the last
    silently).  Keys brought in by a merge (``<<: *anchor``) may be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r} (also at line {seen[key] + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise SpecError(path, "(file)", "no such file") from None
    except yaml.YAMLError as exc:
        raise SpecError(path, "(yaml)", str(exc).replace("\n", " ")) from None


def validate(doc: Any, schema: dict, path: Path, prefix: str = "") -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        # a failing oneOf/anyOf hides the useful message in its context
        if err.context:
            err = min(err.context, key=lambda e: len(e.absolute_path))
        where = _field_path(err)
        if prefix:
            where = prefix + ("" if where == "(top level)" else ("" if where.startswith("[") else ".") + where)
        raise SpecError(path, where, err.message)


@dataclass(frozen=True)
class Scale:
    name: str
    description: str
    seeds: tuple[int, ...]
    evidence: bool
    train_threads: int
    min_seeds: int = 3
    gpu: bool = False
    configs_per_job: int = 1
    pool_seconds: float | None = None  # a pool's expected seconds at most this (benchmarks/throughput.csv)


# How close a run is to the paper, from the closest to the farthest.  Each deviation of an
# experiment is tagged with the level it leaves the run at ("cut: 1,500 of 10,000 steps");
# an experiment is at the farthest level among its deviations at that scale, a claim at the
# farthest level of its experiments.  "minor" deviations (a re-implementation of the same
# model, more seeds) leave a run faithful.
LEVELS = ("faithful", "cut", "stand-in")
DEVIATION_TAGS = {"minor": "faithful", "cut": "cut", "stand-in": "stand-in"}


def deviation_level(text: str) -> str:
    tag = text.split(":", 1)[0].strip()
    if tag not in DEVIATION_TAGS:
        raise ValueError(f"deviation {text!r} does not start with one of {', '.join(t + ':' for t in DEVIATION_TAGS)}")
    return DEVIATION_TAGS[tag]


def evidence_level(resolved: list[dict]) -> str:
    """The level of a claim whose experiments, resolved at one scale, are ``resolved``."""
    found = {deviation_level(d) for r in resolved for d in r["deviations"]}
    return max(found | {"faithful"}, key=LEVELS.index)


def level_reason(resolved: dict[str, dict]) -> str:
    """The deviations that put a claim's experiments at their level (for error messages)."""
    level = evidence_level(list(resolved.values()))
    found = dict.fromkeys(d for r in resolved.values() for d in r["deviations"] if deviation_level(d) == level)
    return "; ".join(repr(d) for d in found)


@dataclass
class Paper:
    id: str
    path: Path
    doc: dict
    experiments: dict[str, dict] = field(default_factory=dict)
    claims: list[dict] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.doc["title"]


def load_scale(name: str, root: Path | None = None) -> Scale:
    return _load_scale(name, str(root or repo_root()))


@lru_cache(maxsize=None)
def _load_scale(name: str, root: str) -> Scale:
    root = Path(root)
    path = root / "configs" / "scales" / f"{name}.yaml"
    if name not in SCALES:
        raise SpecError(path, "scale", f"unknown scale {name!r} (choose from {', '.join(SCALES)})")
    doc = _load_yaml(path)
    validate(doc, _schema(str(root), "scale"), path)
    if doc["name"] != name:
        raise SpecError(path, "name", f"{doc['name']!r} does not match the file name {name!r}")
    return Scale(**{**doc, "seeds": tuple(doc["seeds"])})


def load_datasets(root: Path | None = None) -> dict[str, dict]:
    root = root or repo_root()
    path = root / "configs" / "datasets.yaml"
    doc = _load_yaml(path)
    validate(doc, _schema(str(root), "datasets"), path)
    return doc


def load_paper(path: Path, root: Path | None = None, datasets: dict | None = None, check_names: bool = True) -> Paper:
    """Load and fully check one paper spec (schema, cross-references, registered names;
    ``check_names=False`` skips the registries, which import every method module)."""
    from softrepro.registry import BENCHMARKS, GENERATORS, LOSSES, MODELS, OPTIMIZERS, PROBES, SCHEDULES, TASKS

    root = root or repo_root()
    path = Path(path)
    doc = _load_yaml(path)
    schema = _schema(str(root), "paper")
    exps = doc.get("experiments") if isinstance(doc, dict) else None
    if isinstance(exps, dict):  # an experiment on a shared protocol is checked as merged with it (it may override part of a key)
        doc["experiments"] = {name: apply_protocol(load_protocol(exp["protocol"], root, path, f"experiments.{name}"), exp)
                              if isinstance(exp, dict) and isinstance(exp.get("protocol"), str) else exp
                              for name, exp in exps.items()}
    validate(doc, schema, path)
    if doc["id"] != path.stem:
        raise SpecError(path, "id", f"{doc['id']!r} does not match the file name {path.stem!r}")
    datasets = datasets if datasets is not None else load_datasets(root)
    exp_schema = {**schema["$defs"]["experiment"], "$defs": schema["$defs"]}
    expanded = {}
    for name, exp in doc["experiments"].items():
        for sub_name, sub in expand_matrix(name, exp, path).items():
            if sub_name in expanded or (sub_name != name and sub_name in doc["experiments"]):
                raise SpecError(path, f"experiments.{name}.matrix", f"expands to {sub_name!r}, which already exists")
            expanded[sub_name] = sub
    doc["experiments"] = expanded
    for name, exp in expanded.items():
        where = f"experiments.{name}"
        for scale in SCALES:  # every resolved variant must itself be a valid experiment
            resolved = {k: v for k, v in resolve_experiment(exp, scale).items() if k != "protocol"}
            validate(resolved, exp_schema, path, prefix=f"{where}(scale={scale})")
        for scale in SCALES:
            resolved = resolve_experiment(exp, scale)
            if not (resolved.get("skip") or resolved.get("grid_cut") or load_scale(scale, root).evidence) \
                    and evidence_level([resolved]) == "faithful":
                raise SpecError(path, f"{where}.scales.{scale}.deviations",
                                f"scale {scale!r} is never evidence, so its runs must say how they are cut "
                                "(a 'cut: ' or 'stand-in: ' deviation)")
        if exp.get("skip") or not check_names:
            continue  # never runs: nothing to look up
        if exp["kind"] == "train":
            if exp["dataset"] not in datasets:
                raise SpecError(path, f"{where}.dataset", f"unknown dataset {exp['dataset']!r} (configs/datasets.yaml has {', '.join(datasets)})")
            for key, registry in (("model", MODELS), ("loss", LOSSES), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
                if key in exp and exp[key]["name"] not in registry:
                    raise SpecError(path, f"{where}.{key}.name", f"unknown {key} {exp[key]['name']!r} (known: {', '.join(registry.names())})")
            generator = datasets[exp["dataset"]].get("generator")
            for scale in SCALES:  # every factory's keys, as resolved at each scale
                r = resolve_experiment(exp, scale)
                for key, registry in (("model", MODELS), ("loss", LOSSES), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
                    if key in r:  # optimizer.decay is the engine's (parameter groups), not the optimizer's
                        given = {k: v for k, v in r[key].items() if not (key == "optimizer" and k == "decay")}
                        _check_keys(registry, r[key]["name"], given, path, f"{where}.{key}", scale)
                if generator:
                    _check_keys(GENERATORS, generator, {**datasets[exp["dataset"]].get("defaults", {}), **r.get("data", {})},
                                path, f"{where}.data", scale)
                if r.get("ood"):
                    _check_ood(r, datasets, path, f"{where}.ood", scale)
            if exp.get("task", "classification") not in ["classification", *TASKS.names()]:
                raise SpecError(path, f"{where}.task", f"unknown task {exp['task']!r} (known: classification, {', '.join(TASKS.names())})")
            for i, probe in enumerate(exp.get("probes", [])):
                if probe not in PROBES:
                    raise SpecError(path, f"{where}.probes[{i}]", f"unknown probe {probe!r} (known: {', '.join(PROBES.names())})")
        elif exp["benchmark"]["name"] not in BENCHMARKS:
            raise SpecError(path, f"{where}.benchmark.name", f"unknown benchmark {exp['benchmark']['name']!r} (known: {', '.join(BENCHMARKS.names())})")
        else:
            if exp.get("dataset") and exp["dataset"] not in datasets:  # a benchmark may read one dataset (params["data"])
                raise SpecError(path, f"{where}.dataset", f"unknown dataset {exp['dataset']!r} (configs/datasets.yaml has {', '.join(datasets)})")
            for scale in SCALES:
                _check_keys(BENCHMARKS, exp["benchmark"]["name"], resolve_experiment(exp, scale)["benchmark"], path,
                            f"{where}.benchmark", scale)
    _link_teachers(expanded, path)
    seen = set()
    for i, claim in enumerate(doc["claims"]):
        where = f"claims[{i}]"
        if claim["id"] in seen:
            raise SpecError(path, f"{where}.id", f"duplicate claim id {claim['id']!r}")
        seen.add(claim["id"])
        refs = {"experiment": claim["experiment"]} if "experiment" in claim else {}
        refs.update({f"experiments.{k}": v for k, v in claim.get("experiments", {}).items()})
        for key, ref in refs.items():
            if "sweep" in claim:  # a statistic over a matrix: the arms name matrix experiments (before their labels)
                members = [n for n, e in expanded.items() if e.get("matrix_base") == ref and claim["sweep"]["over"] in e["matrix_labels"]]
                if not members:
                    raise SpecError(path, f"{where}.{key}", f"a sweep claim's arms are matrix experiments with the axis "
                                    f"{claim['sweep']['over']!r}: {ref!r} is not one")
                claim["sweep"].setdefault("members", {})[key.rpartition(".")[2]] = members
            elif ref not in doc["experiments"]:
                raise SpecError(path, f"{where}.{key}", f"unknown experiment {ref!r} (spec has {', '.join(doc['experiments'])})")
        _check_claim(claim, doc["experiments"], path, where, root)
    return Paper(id=doc["id"], path=path, doc=doc, experiments=doc["experiments"], claims=doc["claims"])


def _link_teachers(experiments: dict, path: Path) -> None:
    """``teacher: <experiment>`` (a training experiment of the same spec whose trained model the
    student reads, seed for seed) -> ``{"experiment": name, "spec": <the teacher's experiment>}``, so
    that ``resolve_experiment`` can put the teacher's run key into the student's configuration (a
    changed teacher is a new run key for its students too).  Teachers before students; no cycles."""
    done: set[str] = set()

    def link(name: str, chain: tuple[str, ...]) -> None:
        exp = experiments[name]
        teacher = exp.get("teacher")
        if name in done or not isinstance(teacher, str):
            done.add(name)
            return
        where = f"experiments.{name}.teacher"
        if teacher not in experiments:
            raise SpecError(path, where, f"unknown experiment {teacher!r} (spec has {', '.join(experiments)})")
        if teacher in chain or teacher == name:
            raise SpecError(path, where, f"teachers form a cycle: {' -> '.join((*chain, name, teacher))}")
        if experiments[teacher]["kind"] != "train":
            raise SpecError(path, where, f"the teacher {teacher!r} is a {experiments[teacher]['kind']}, not a training experiment")
        if exp["kind"] != "train":
            raise SpecError(path, where, "only a training experiment can have a teacher")
        link(teacher, (*chain, name))
        for key in ("dataset", "preprocess", "data", "train_subset", "train_range"):
            if experiments[teacher].get(key) != exp.get(key):
                raise SpecError(path, where, f"the teacher {teacher!r} reads other inputs ({key}: {experiments[teacher].get(key)!r} "
                                             f"vs {exp.get(key)!r}): its outputs on the student's training set would not be its own")
        exp["teacher"] = {"experiment": teacher, "spec": experiments[teacher]}
        done.add(name)

    for name in experiments:
        link(name, ())


def experiment_datasets(exp: dict) -> tuple[str, ...]:
    """Every dataset a resolved experiment reads: its own, then its OOD sets' (the run's DAG inputs)."""
    if not exp.get("dataset"):
        return ()
    sets = (exp.get("ood") or {}).get("sets", {}).values()
    return tuple(dict.fromkeys([exp["dataset"], *(s["dataset"] for s in sets if "dataset" in s)]))


def _check_ood(exp: dict, datasets: dict, path: Path, where: str, scale: str) -> None:
    """An ``ood:`` section: known scores with known parameters, known datasets, tuning sets that exist."""
    from softrepro.registry import SCORES

    cfg = exp["ood"]
    if exp.get("preprocess"):
        raise SpecError(path, f"{where}", "OOD sets are scored in the raw input space: an experiment with "
                        "'preprocess' cannot have an 'ood' section")
    labels = []
    for i, item in enumerate(cfg["scores"]):
        item = {"name": item} if isinstance(item, str) else item
        if item["name"] not in SCORES:
            raise SpecError(path, f"{where}.scores[{i}].name", f"unknown score {item['name']!r} (known: {', '.join(SCORES.names())})")
        _check_keys(SCORES, item["name"], {k: v for k, v in item.items() if k != "as"}, path, f"{where}.scores[{i}]", scale)
        labels.append(item.get("as", item["name"]))
    if len(set(labels)) != len(labels):
        raise SpecError(path, f"{where}.scores", "two scores share a label: give one an 'as:'")
    for name, s in cfg.get("sets", {}).items():
        if "dataset" in s and s["dataset"] not in datasets:
            raise SpecError(path, f"{where}.sets.{name}.dataset", f"unknown dataset {s['dataset']!r}")
    for i, name in enumerate(cfg.get("tune_sets", [])):
        if name not in cfg.get("sets", {}):
            raise SpecError(path, f"{where}.tune_sets[{i}]", f"unknown set {name!r} (sets: {', '.join(cfg.get('sets', {}))})")


def _check_keys(registry, name: str, given: dict, path: Path, where: str, scale: str) -> None:
    """A misspelt or unknown parameter of a registered factory fails here, not inside a job."""
    accepted = registry.accepted(name)
    if accepted is None:
        return
    unknown = sorted(set(given) - {"name"} - accepted)
    if unknown:
        raise SpecError(path, f"{where}.{unknown[0]}", f"unknown parameter {unknown[0]!r} of {registry.kind} {name!r} "
                        f"(at scale {scale}; it takes: {', '.join(sorted(accepted)) or 'no parameters'})")


def claim_experiments(claim: dict) -> list[str]:
    """The experiments a claim reads: its one or two, or, for a sweep claim, every member of its arms' matrices."""
    if "sweep" in claim:
        return [e for arm in ("a", "b") for e in claim["sweep"]["members"].get(arm, [])]
    return [claim["experiment"]] if "experiment" in claim else [claim["experiments"]["a"], claim["experiments"]["b"]]


def claim_metrics(claim: dict) -> list[str]:
    """The metric of each of the claim's experiments (a comparison may read a different metric per arm)."""
    exps = claim_experiments(claim)
    m = claim["metric"]
    return [m[k] for k in ("a", "b")][: len(exps)] if isinstance(m, dict) else [m] * len(exps)


def _check_claim(claim: dict, experiments: dict, path: Path, where: str, root: Path) -> None:
    """What the schema cannot say: every claim must be able to fail, and its declared faithful
    scales must agree with its experiments' deviations."""
    kind, pub = claim["kind"], claim.get("published")
    if isinstance(claim["metric"], dict) and "experiments" not in claim:
        raise SpecError(path, f"{where}.metric", "per-arm metrics ({a, b}) need a two-experiment claim")
    if kind == "comparison":
        pair = isinstance(pub, dict) and None not in pub.values()
        if not pair and "direction" not in claim:
            raise SpecError(path, f"{where}.direction",
                            f"claim {claim['id']!r}: a comparison needs a direction or a published pair (a and b)")
        if pair:
            diff = pub["a"] - pub["b"]
            hw = claim["tolerance"]["abs"] if "abs" in claim["tolerance"] else claim["tolerance"]["rel"] * abs(diff)
            if abs(diff) <= hw:
                raise SpecError(path, f"{where}.tolerance",
                                f"claim {claim['id']!r}: the tolerance band [{diff - hw:g}, {diff + hw:g}] around the published "
                                f"difference {diff:g} contains 0, so no outcome could refute the claimed difference; "
                                "narrow it below the difference or make the claim qualitative")
            if "direction" in claim and (diff > 0) != (claim["direction"] == "greater"):
                raise SpecError(path, f"{where}.direction",
                                f"claim {claim['id']!r}: direction {claim['direction']!r} contradicts the published pair")
    if kind == "ratio" and pub is not None:
        hw = claim["tolerance"]["abs"] if "abs" in claim["tolerance"] else claim["tolerance"]["rel"] * abs(pub)
        if pub - hw <= 1 <= pub + hw:
            raise SpecError(path, f"{where}.tolerance",
                            f"claim {claim['id']!r}: the tolerance band [{pub - hw:g}, {pub + hw:g}] contains 1 (no effect), "
                            "so no outcome could refute the claimed ratio")
    exps = claim_experiments(claim)
    derived = set()
    for scale in SCALES:
        if not load_scale(scale, root).evidence:
            continue
        resolved = {e: resolve_experiment(experiments[e], scale) for e in exps}
        if any(r.get("skip") or r.get("grid_cut") for r in resolved.values()):
            if scale in claim["faithful_scales"]:
                raise SpecError(path, f"{where}.faithful_scales",
                                f"claim {claim['id']!r}: listed as faithful at {scale!r}, where its experiments do not run")
            continue
        level = evidence_level(list(resolved.values()))
        if level == "faithful":
            derived.add(scale)
        elif scale in claim["faithful_scales"]:
            raise SpecError(path, f"{where}.faithful_scales",
                            f"claim {claim['id']!r}: listed as faithful at {scale!r}, but its experiments are at the "
                            f"{level!r} level there ({level_reason(resolved)})")
    if claim.get("published_from") == "secondary" and (derived or claim["faithful_scales"]):
        raise SpecError(path, f"{where}.published_from",
                        f"claim {claim['id']!r}: its number is known only from a secondary source (not seen printed in "
                        f"the paper), so it cannot be judged at a faithful level, yet it would be at "
                        f"{', '.join(sorted(derived | set(claim['faithful_scales'])))}; find the number where it was "
                        "printed, or tag the deviation that makes the runs not faithful")
    missing = derived - set(claim["faithful_scales"])
    if missing:
        raise SpecError(path, f"{where}.faithful_scales",
                        f"claim {claim['id']!r}: its experiments carry no cut or stand-in deviation at "
                        f"{', '.join(sorted(missing))}, so it is faithful there; list it, or tag the deviation that makes it not so")


def load_papers(selection: str | list[str] | None = "all", root: Path | None = None, families: str | None = "all") -> list[Paper]:
    """The specs of ``selection`` ("all" or ids), keeping those of ``families`` ("all" or names)."""
    root = root or repo_root()
    paper_dir = root / "configs" / "papers"
    available = sorted(p.stem for p in paper_dir.glob("*.yaml"))
    if selection in (None, "all", ""):
        ids = available
    else:
        ids = selection.split(",") if isinstance(selection, str) else list(selection)
        ids = [i.strip() for i in ids if i.strip()]
        missing = [i for i in ids if i not in available]
        if missing:
            raise SpecError(paper_dir, "papers", f"no spec for {', '.join(missing)} (have {', '.join(available)})")
    datasets = load_datasets(root)
    papers = [load_paper(paper_dir / f"{i}.yaml", root, datasets) for i in ids]
    if families not in (None, "all", ""):
        wanted = {f.strip() for f in families.split(",")}
        known = {p.doc["family"] for p in papers}
        if wanted - known:
            raise SpecError(paper_dir, "families", f"no paper of family {', '.join(sorted(wanted - known))} "
                            f"(the selected specs have {', '.join(sorted(known))})")
        papers = [p for p in papers if p.doc["family"] in wanted]
    return papers


def load_protocol(name: str, root: Path, spec_path: Path | None = None, where: str = "protocol") -> dict:
    """A shared training protocol (``configs/protocols/<name>.yaml``): the experiment keys
    several papers have in common, so that their common baseline is one run."""
    path = root / "configs" / "protocols" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml"))) or "none"
        raise SpecError(spec_path or path, f"{where}.protocol", f"no protocol {name!r} (configs/protocols has {known})")
    doc = _load_yaml(path)
    paper = _schema(str(root), "paper")
    partial = {k: v for k, v in paper["$defs"]["experiment"].items() if k not in ("required", "allOf")}
    validate(doc, {**partial, "type": "object", "$defs": paper["$defs"]}, path)
    return doc


def apply_protocol(protocol: dict, exp: dict) -> dict:
    """``exp`` on top of ``protocol``: keys merged (the experiment wins), deviation lists
    concatenated at the top level and per scale (the protocol's first)."""
    merged = _deep_merge({k: v for k, v in protocol.items() if k != "description"}, exp)
    merged["deviations"] = list(protocol.get("deviations", [])) + list(exp.get("deviations", []))
    for scale in set(protocol.get("scales", {})) | set(exp.get("scales", {})):
        devs = [*protocol.get("scales", {}).get(scale, {}).get("deviations", []),
                *exp.get("scales", {}).get(scale, {}).get("deviations", [])]
        if devs:
            merged["scales"][scale]["deviations"] = devs
    return merged


def expand_matrix(name: str, exp: dict, path: Path) -> dict[str, dict]:
    """``matrix: {axis: {label: overrides}}`` -> one experiment per combination of labels,
    named ``<name>-<label>-<label>...`` (axes in spec order).  ``scales: {s: {matrix: {axis:
    [labels]}}}`` keeps only those labels at scale ``s``; the others are marked ``grid_cut``
    there and are not planned at that scale."""
    if "matrix" not in exp:
        return {name: exp}
    axes = exp["matrix"]
    base = {k: v for k, v in exp.items() if k != "matrix"}
    keep = {}
    for scale, over in exp.get("scales", {}).items():
        for axis, labels in over.get("matrix", {}).items():
            where = f"experiments.{name}.scales.{scale}.matrix.{axis}"
            if axis not in axes:
                raise SpecError(path, where, f"no matrix axis {axis!r} (axes: {', '.join(axes)})")
            unknown = [lab for lab in labels if lab not in axes[axis]]
            if unknown:
                raise SpecError(path, where, f"unknown labels {unknown} (axis has {', '.join(axes[axis])})")
            keep.setdefault(scale, {})[axis] = set(labels)
    out = {}
    for combo in itertools.product(*(list(v.items()) for v in axes.values())):
        sub = copy.deepcopy(base)
        for _, overrides in combo:
            sub = _deep_merge(sub, overrides)
        labels = dict(zip(axes, (label for label, _ in combo)))
        sub["scales"] = {s: {k: v for k, v in o.items() if k != "matrix"} for s, o in sub.get("scales", {}).items()}
        for scale, axes_kept in keep.items():
            if any(labels[a] not in kept for a, kept in axes_kept.items()):
                sub["scales"].setdefault(scale, {})["grid_cut"] = True
        sub["matrix_labels"] = labels
        sub["matrix_base"] = name
        out["-".join([name, *labels.values()])] = sub
    return out


# Keys that describe an experiment but do not change what it computes.
NON_COMPUTING_KEYS = ("deviations", "description", "protocol", "checkpoint_every", "skip", "grid_cut",
                      "matrix_labels", "matrix_base", "deterministic")


def run_key(resolved: dict) -> str:
    """The identity of a run: a readable prefix plus a digest of everything that changes its
    numbers.  Experiments of different papers with the same key share one run per seed."""
    import hashlib

    computing = {k: v for k, v in resolved.items() if k not in NON_COMPUTING_KEYS}
    digest = hashlib.sha256(json.dumps(computing, sort_keys=True).encode()).hexdigest()[:12]
    what = resolved.get("benchmark", {}).get("name") if resolved["kind"] == "benchmark" else \
        f"{resolved['dataset']}-{resolved['loss']['name']}"
    return f"{what}-{digest}".replace("_", "-")


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_experiment(exp: dict, scale: str) -> dict:
    """The experiment as run at ``scale``: overrides merged, deviations concatenated.

    Returns a dict without ``scales``; ``skip`` (a reason) is set when the
    experiment does not run at this scale.
    """
    over = copy.deepcopy(exp.get("scales", {}).get(scale, {}))
    extra_devs = over.pop("deviations", [])
    merged = _deep_merge({k: v for k, v in exp.items() if k != "scales"}, over)
    merged["deviations"] = list(exp.get("deviations", [])) + list(extra_devs)
    teacher = merged.get("teacher")
    if isinstance(teacher, dict) and "spec" in teacher:  # linked by load_paper: the teacher as run at this scale
        t = resolve_experiment(teacher["spec"], scale)
        stop = t.get("skip") or ("not in this scale's grid" if t.get("grid_cut") else None)
        merged["teacher"] = {"experiment": teacher["experiment"], "run_key": None if stop else run_key(t), "model": t["model"]}
        if stop and not merged.get("skip"):
            merged["skip"] = f"its teacher {teacher['experiment']!r} does not run at this scale ({stop})"
    return merged
