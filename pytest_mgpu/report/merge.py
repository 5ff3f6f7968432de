"""``pytest-mgpu merge``: the ``--mgpu-json`` files of a sharded run (``--mgpu-shard I/N``) as one report.

Each shard's file holds its results and the gate's comparisons (verdicts after confirmation, as
the shard decided them). Merging checks that the files belong together (one fingerprint, one N,
every shard present once, no result twice) and writes what one unsharded run would have: one
``--mgpu-json`` document, the terminal gate table, and one Markdown comment, rendered by the same
code (:mod:`.render`). Its exit code follows the plugin's one failure rule
(:func:`~pytest_mgpu.judge.verdicts.fails`): 1 when a result fails by it (``--strict`` as ``--mgpu-strict``),
2 for unusable input.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import CliError
from ..judge.results import RESULTS_SCHEMA_VERSION
from ..judge.verdicts import Comparison, MetricComparison, Verdict


def comparison_to_dict(c: Comparison) -> dict[str, Any]:
    """JSON-ready form of a gate comparison (the ``comparisons`` list of ``--mgpu-json``)."""
    return json.loads(json.dumps(dataclasses.asdict(c), default=str))


def _fields(cls: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that are fields of ``cls``; a number field's ``"inf"`` (see ``json_safe``) as a float."""
    numbers = {f.name for f in dataclasses.fields(cls) if "float" in str(f.type)}
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: (float(v) if k in numbers and v in ("inf", "-inf", "nan") else v) for k, v in data.items() if k in names}


def comparison_from_dict(data: Mapping[str, Any]) -> Comparison:
    """Inverse of :func:`comparison_to_dict` (unknown keys are ignored)."""
    metrics = tuple(
        MetricComparison(**{**_fields(MetricComparison, m), "verdict": Verdict(m["verdict"])})
        for m in data.get("metrics", ())
    )
    return Comparison(**{**_fields(Comparison, data), "verdict": Verdict(data["verdict"]), "metrics": metrics})


@dataclasses.dataclass
class Shard:
    """One shard's ``--mgpu-json`` file."""

    path: Path
    doc: dict[str, Any]
    comparisons: list[Comparison]

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(I, N)`` from the file's environment, if the run was sharded."""
        text = str(self.doc.get("env", {}).get("shard") or "")
        i, sep, n = text.partition("/")
        return (int(i), int(n)) if sep and i.isdigit() and n.isdigit() else None


def load_shard(path: str | Path) -> Shard:
    """Read one shard's ``--mgpu-json`` file; CliError names what is wrong with it."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"{p}: no such file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CliError(f"{p}: not a readable --mgpu-json file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise CliError(f"{p}: not a --mgpu-json results file (no 'results' list)")
    if not isinstance(doc.get("comparisons"), list):
        raise CliError(f"{p}: has no 'comparisons' (the gate's verdicts); write it with this version's --mgpu-json")
    if not isinstance(doc.get("env", {}), dict):
        kind = type(doc["env"]).__name__
        raise CliError(f"{p}: 'env' is {kind}, not an object; regenerate the file with --mgpu-json")
    for i, r in enumerate(doc["results"]):
        if not isinstance(r, dict) or not isinstance(r.get("entry_id"), str):
            raise CliError(f"{p}: result #{i + 1} is malformed ({str(r)[:60]!r}: not an object with an 'entry_id'); "
                           f"regenerate the file with --mgpu-json")
    try:
        comps = [comparison_from_dict(c) for c in doc["comparisons"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CliError(f"{p}: a comparison is malformed ({exc!r}); regenerate the file with --mgpu-json") from None
    return Shard(p, doc, comps)


def merge_shards(shards: Sequence[Shard], allow_missing: bool = False) -> dict[str, Any]:
    """One ``--mgpu-json`` document from the shards' documents; CliError if they do not belong together."""
    if not shards:
        raise CliError("no files to merge")
    fps = {s.doc.get("fingerprint") for s in shards}
    if len(fps) > 1:
        detail = ", ".join(f"{s.path.name}: {s.doc.get('fingerprint')}" for s in shards)
        raise CliError(f"the files come from different hardware ({detail}); merge shards of one run")
    ids = [s.shard for s in shards]
    if all(ids):
        ns = {n for _, n in ids}  # type: ignore[misc]
        if len(ns) > 1:
            raise CliError(f"the files are shards of different splits ({', '.join(f'{i}/{n}' for i, n in ids)})")  # type: ignore[misc]
        (n,) = ns
        seen: dict[int, Path] = {}
        for s in shards:
            i = s.shard[0]  # type: ignore[index]
            if i in seen:
                raise CliError(f"shard {i}/{n} given twice ({seen[i]}, {s.path})")
            seen[i] = s.path
        missing = sorted(set(range(1, n + 1)) - set(seen))
        if missing and not allow_missing:
            raise CliError(
                f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing: their items would be absent from the "
                f"report; pass every shard's file (or --allow-missing)"
            )
    elif any(ids):
        raise CliError("some files are shards (--mgpu-shard) and some are not; merge the shards of one run")
    check_coverage(shards, allow_missing)
    owner: dict[tuple[str, str], Path] = {}
    results: list[dict[str, Any]] = []
    for s in shards:
        for r in s.doc["results"]:
            key = (str(r.get("module")), str(r.get("entry_id")))
            if key in owner:
                raise CliError(f"{key[1]} is in two files ({owner[key]}, {s.path}): shards must not overlap")
            owner[key] = s.path
            results.append(r)
    comparisons = [c for s in shards for c in s.comparisons]
    judged = {c.entry_id for c in comparisons}
    comparisons += [c for r in results if (c := ab_comparison(r)) is not None and c.entry_id not in judged]
    results.sort(key=lambda r: (str(r.get("module")), str(r.get("nodeid")), str(r.get("entry_id"))))
    comparisons.sort(key=lambda c: c.entry_id)
    env = dict(shards[0].doc.get("env", {}))
    env.pop("shard", None)
    env["shards"] = [{"file": s.path.name, "shard": s.doc.get("env", {}).get("shard"),
                      "commit": s.doc.get("env", {}).get("commit"), "date": s.doc.get("env", {}).get("date")}
                     for s in shards]
    doc: dict[str, Any] = {
        "schema_version": shards[0].doc.get("schema_version", RESULTS_SCHEMA_VERSION),
        "fingerprint": shards[0].doc.get("fingerprint"),
        "env": env,
        "results": results,
        "comparisons": [comparison_to_dict(c) for c in comparisons],
    }
    abs_ = [s.doc["ab"] for s in shards if isinstance(s.doc.get("ab"), Mapping)]
    if abs_:  # the A/B block of one run: the first shard's sides and rule, the shards' counts summed
        counts: dict[str, int] = {}
        for a in abs_:
            for v, n in (a.get("verdicts") or {}).items():
                counts[str(v)] = counts.get(str(v), 0) + int(n)
        doc["ab"] = {**abs_[0], "verdicts": counts, "summary": None,
                     "gpu_minutes": sum(float(a.get("gpu_minutes") or 0.0) for a in abs_)}
    return doc


def _share(s: Shard) -> tuple[list[str], list[str]] | None:
    """A shard file's (collected items, its items), None for a file written before shards recorded them."""
    share = s.doc.get("shard")
    if share is None:
        return None
    ok = isinstance(share, Mapping) and all(
        isinstance(share.get(k), list) and all(isinstance(x, str) for x in share[k]) for k in ("collected", "items"))
    if not ok:
        raise CliError(f"{s.path}: 'shard' is malformed (want lists of node ids 'collected' and 'items'); "
                       f"regenerate the file with --mgpu-json")
    return list(share["collected"]), list(share["items"])


def check_coverage(shards: Sequence[Shard], allow_missing: bool = False) -> None:
    """Every collected item in exactly one shard: CliError names a duplicated or a missing item.

    Shards split the suite on its items alone, so every runner must have collected the same items;
    files written before shards recorded their items are not checked.
    """
    shares = [(s, _share(s)) for s in shards]
    known = [(s, sh) for s, sh in shares if sh is not None]
    if not known or len(known) != len(shares):
        return
    first, (suite, _) = known[0][0], known[0][1]
    for s, (collected, _) in known[1:]:
        if set(collected) != set(suite):
            diff = sorted(set(collected) ^ set(suite))
            raise CliError(
                f"{first.path} and {s.path} collected different suites (e.g. {diff[0]}); every shard must run the "
                f"same tests with the same options"
            )
    where: dict[str, Path] = {}
    for s, (_, items) in known:
        for nodeid in items:
            if nodeid in where:
                raise CliError(f"{nodeid} ran in two shards ({where[nodeid]}, {s.path}): the shards overlap")
            where[nodeid] = s.path
    missing = [x for x in suite if x not in where]
    if missing and not allow_missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CliError(
            f"{missing[0]}{more} ran in no shard: the report would lack {'them' if more else 'it'}; pass every "
            f"shard's file, or --allow-missing"
        )


def settings_warnings(shards: Sequence[Shard]) -> list[str]:
    """One warning per setting (tolerances, engine options, ...) that differs between the shards' runs."""
    known = [(s, s.doc["settings"]) for s in shards if isinstance(s.doc.get("settings"), Mapping)]
    out = []
    keys = sorted({k for _, st in known for k in st})
    for key in keys:
        values = {json.dumps(st.get(key), sort_keys=True) for _, st in known}
        if len(values) > 1:
            per = "; ".join(f"{s.path.name}: {json.dumps(st.get(key), sort_keys=True)}" for s, st in known)
            what = {"gate": "gate settings (tolerances, gated metrics, noise)"}.get(key, key.replace("_", " "))
            out.append(f"warning: the shards ran with different {what}, so the merged verdicts were not judged "
                       f"alike: {per}")
    return out


def ab_comparison(result: Mapping[str, Any]) -> Comparison | None:
    """A result's same-job A/B verdict (its ``ab`` block) as a comparison, so that it counts in the merge."""
    ab = result.get("ab")
    if not isinstance(ab, Mapping) or "verdict" not in ab:
        return None
    try:
        verdict = Verdict(str(ab["verdict"]))
    except ValueError:
        raise CliError(f"{result.get('entry_id')}: unknown A/B verdict {ab['verdict']!r}") from None
    note = f"A/B, {ab.get('rounds', '?')} rounds" + (f": {ab['note']}" if ab.get("note") else "")
    return Comparison(
        str(result.get("entry_id")), verdict, (), note, str(ab.get("old_version") or "?"),
        str(ab.get("new_version") or result.get("engine_version") or "?"), str(result.get("engine") or "") or None,
    )


def merged_comparisons(doc: Mapping[str, Any]) -> list[Comparison]:
    """The comparisons of a (merged) document."""
    return [comparison_from_dict(c) for c in doc.get("comparisons", [])]


