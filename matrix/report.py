"""Turn the stored cell results into ``matrix/README.md`` (table + verdicts) and ``matrix/heatmap.svg``.

Generated, never hand-written: ``nox -s matrix_report``. A verdict is read off the evidence alone (did the
bug reproduce on the upstream code of each transformers release?), then compared with the patch registry's
declared range; any disagreement is printed in the verdict (and fails tests/test_matrix.py).
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from packaging.version import Version

from matrix.grid import HERE, ROOT, Row, is_current, is_next, load_result, load_rows, release_of

README = HERE / "README.md"
HEATMAP = HERE / "heatmap.svg"


def _patches() -> list[Any]:
    """The patches the grid judges: those on transformers (its axis). A client's patch (optimum-executorch) is
    judged where that client is installed: ``nox -s optimum_cli`` and the default-stack tests row."""
    from gemma3n_export_fixes.plugin.patches import REGISTRY

    return [p for p in REGISTRY if p.is_transformers_patch]


def evidence(rows: list[Row]) -> list[tuple[Row, dict[str, Any]]]:
    """(row, result) for every pinned row with a stored result that got as far as the reproducers (the "next"
    row is news, not evidence for the declared ranges: see ``next_lines``)."""
    found = []
    for row in rows:
        if is_next(row):
            continue
        result = load_result(row)
        if result and result.get("patches"):
            found.append((row, result))
    return found


def upstream_bug_by_release(patch_id: str, found: list[tuple[Row, dict[str, Any]]]) -> dict[Version, bool]:
    """transformers release -> did the bug reproduce on upstream code (any executorch of that release)."""
    by_release: dict[Version, bool] = defaultdict(bool)
    for row, result in found:
        for p in result["patches"]:
            if p["id"] == patch_id:
                by_release[Version(row["transformers"])] |= bool(p["upstream"]["bug"])
    return dict(by_release)


def disagreements(found: list[tuple[Row, dict[str, Any]]]) -> list[str]:
    """Rows where a patch's declared range and the evidence disagree, as readable lines."""
    problems = []
    for patch in _patches():
        for row, result in found:
            for p in result["patches"]:
                if p["id"] != patch.id:
                    continue
                declared, seen = patch.needed_by(row["transformers"]), bool(p["upstream"]["bug"])
                if declared != seen:
                    problems.append(
                        f"{patch.id} on {row['id']}: the registry says {'needed' if declared else 'not needed'} "
                        f"({patch.needed_on}), the upstream reproducer {'shows' if seen else 'does not show'} the bug"
                    )
    return problems


def _refusal(export: dict[str, Any]) -> str | None:
    """Why check did not attempt this export (``unsupported``: results stored before the recipe patches)."""
    return export.get("refused") or export.get("unsupported")


def kv_evidence(found: list[tuple[Row, dict[str, Any]]]) -> dict[str, dict[Version, bool]]:
    """KV-cache program -> transformers release -> did it validate there (rows whose check exported it; a release
    where check refused it is not evidence of the recipe either way: see ``kv_verdict``)."""
    works: dict[str, dict[Version, bool]] = {}
    for row, result in found:
        for e in result.get("exports", []):
            if e.get("name", "").startswith("kv-") and not _refusal(e):
                seen = works.setdefault(e["name"], {})
                release = Version(row["transformers"])
                seen[release] = seen.get(release, True) and "validation" in e and bool(e["ok"])
    return works


def kv_disagreements(found: list[tuple[Row, dict[str, Any]]]) -> list[str]:
    """KV-cache exports that did not validate: they are declared to work on every release (the recipe is right
    from ``KV_CACHE_SINCE``, and the recipe patches make it right before)."""
    problems = []
    for row, result in found:
        for e in result.get("exports", []):
            if e.get("name", "").startswith("kv-") and not e["ok"]:
                why = _refusal(e) or e.get("error", "") or "did not validate"
                problems.append(f"{e['name']} on {row['id']}: declared supported, but {why[:160]}")
    return problems


def kv_verdict(found: list[tuple[Row, dict[str, Any]]]) -> str:
    from gemma3n_export_fixes.export.kvcache import KV_CACHE_SINCE, RECIPE_PATCHES

    works = kv_evidence(found)
    refused = sorted({Version(r["transformers"]) for r, res in found
                      if any(_refusal(e) for e in res.get("exports", []))})  # fmt: skip
    if not works and not refused:
        return "no evidence yet"
    text = (f"KV-cache export on every release: the recipe is right from transformers {KV_CACHE_SINCE}, "
            f"older releases through {' + '.join(RECIPE_PATCHES)}")  # fmt: skip
    for name, seen in sorted(works.items()):
        good = sorted(v for v, ok in seen.items() if ok)
        bad = sorted(v for v, ok in seen.items() if not ok)
        text += f"; {name} validated on {', '.join(map(str, good)) or 'none'}"
        if bad:
            text += f", FAILED on {', '.join(map(str, bad))}"
    if refused:
        text += f"; refused on {', '.join(map(str, refused))}"
    return text


def _toolchain_patches() -> list[Any]:
    """The export-scope patches (ExecuTorch, torch): judged by the rows that vary those."""
    from gemma3n_export_fixes.plugin.patch import Scope
    from gemma3n_export_fixes.plugin.patches import REGISTRY

    return [p for p in REGISTRY if p.scope is Scope.EXPORT]


def toolchain_verdict(patch: Any, found: list[tuple[Row, dict[str, Any]]]) -> str:
    """Per release of the patch's distribution (the grid's executorch / torch): its state in check's record, and
    whether that row's exports (which ran with it) validated; "drop once" where it is no longer needed."""
    states: dict[str, set[str]] = {}
    for row, result in found:
        for p in result["patches"]:
            if p["id"] == patch.id:
                ok = "validated" if result.get("exports") and all(e.get("ok") for e in result["exports"]) else "FAILED"
                states.setdefault(str(row[patch.distribution]), set()).add(f"{p['state']}, exports {ok}")
    if not states:
        return "no evidence yet (no stored result lists it: re-run the grid)"
    seen = "; ".join(f"{patch.distribution} {v}: {' / '.join(sorted(s))}" for v, s in sorted(states.items()))
    return f"{patch.kind.value}, needed on {patch.distribution} {patch.needed_on}: {seen}"


def verdict(patch: Any, found: list[tuple[Row, dict[str, Any]]]) -> str:
    bugs = upstream_bug_by_release(patch.id, found)
    if not bugs:
        return "no evidence yet"
    releases = sorted(bugs)
    newest = releases[-1]
    if bugs[newest]:
        first = min(v for v in releases if bugs[v])
        return f"needed on transformers {first} - {newest}: still needed on the newest release tested ({newest})"
    clean_from = newest
    for release in reversed(releases):
        if bugs[release]:
            break
        clean_from = release
    buggy = [v for v in releases if bugs[v] and v < clean_from]
    if not buggy:
        return f"the bug did not reproduce on any release tested ({releases[0]} - {newest})"
    return (
        f"needed on transformers {buggy[0]} - {buggy[-1]}; not needed from {clean_from} ({patch.upstream}); "
        f"can be dropped once the lowest supported transformers is >= {clean_from}"
    )


def next_lines(rows: list[Row]) -> list[str]:
    """Per patch, what the "next" row (the newest transformers at run time) says: drop candidate or not."""
    lines = []
    for row in rows:
        result = load_result(row) if is_next(row) else None
        if not result or not result.get("patches"):
            continue
        release, when = release_of(row, result), result.get("cell", {}).get("ran_at", "?")[:10]
        lines += ["", f"## Next: transformers {release} (the newest the registry served on {when})", ""]
        judged = {patch.id for patch in _patches()}
        for p in (p for p in result["patches"] if p["id"] in judged):
            shown = bool(p["upstream"]["bug"])
            if p["state"] == "applied" and not shown:
                lines.append(f"- **{p['id']}**: fixed upstream in {release}: drop candidate (the reproducer no "
                             "longer shows the bug on upstream code; end the declared range before it)")  # fmt: skip
            elif shown:
                lines.append(f"- **{p['id']}**: still needed on {release} ({p['state']}, {p['verdict']})")
            else:
                lines.append(f"- **{p['id']}**: not needed on {release} ({p['state']})")
    return lines


def _upstream_link(patch: Any) -> str:
    """Where the upstream side of a patch is written down: its PR draft or its fixed-upstream record."""
    draft = HERE.parent / "upstream_prs" / patch.id / "PR.md"
    if draft.exists():
        return f"upstream PR draft: [upstream_prs/{patch.id}/PR.md](../upstream_prs/{patch.id}/PR.md)"
    return f"fixed upstream: [upstream_prs/{patch.id}.md](../upstream_prs/{patch.id}.md)"


def _cell(p: dict[str, Any]) -> str:
    up = "bug" if p["upstream"]["bug"] else "no bug"
    fixed = "no bug" if not p["patched"]["bug"] else "bug"
    return f"{p['state']}: upstream {up}, patched {fixed} ({p['verdict']})"


#: Export columns: check's export names (results from before KV-cache support name only the backend).
EXPORT_COLUMNS = ("portable", "xnnpack", "kv-portable", "kv-8da4w-4w")


def _export_cell(result: dict[str, Any], name: str) -> str:
    if name not in result.get("exports_selected", EXPORT_COLUMNS):
        return f"not run ({(result.get('cell') or {}).get('kind', 'this')} cell)"
    for e in result.get("exports", []):
        if e.get("name", e["backend"]) == name:
            if _refusal(e):
                return "refused: a recipe patch is not applied"
            if "validation" not in e:
                return f"FAILED: {e.get('error', '')[:60]}"
            v = e["validation"]
            tokens = "" if "tokens_match" not in v else (", tokens =" if v["tokens_match"] else ", tokens differ")
            return f"{'OK' if e['ok'] else 'MISMATCH'} {v['max_abs_diff']:.1e}, top-1 {v['top1_agreement']:.0%}{tokens}"
    return "-"


GRID_WALL = ROOT / "benchmarks" / "results" / "grid_wall.json"


def cost_lines(path: Path = GRID_WALL) -> list[str]:
    """What the grid costs on this machine kind, from the last ``benchmarks/grid_wall.py`` record."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [
        f"Cost: {record['cells_run']} cells in {record['wall'] / 60:.1f} min, {record['jobs']} at a time, median "
        f"cell {record['median_cell']:.0f} s ({record['machine']}, {record['date']}: `{record['command']}`; "
        "`nox -s matrix` runs only the stale cells, and CI refuses a submission with one).",
        "",
    ]


def markdown(rows: list[Row]) -> str:
    patches = _patches()
    found = evidence(rows)
    lines = [
        "# Compatibility matrix (generated by `nox -s matrix_report`; do not edit)",
        "",
        "Each row is one cell of [`grid.toml`](grid.toml): a venv with those pins, `gemma3n-export-fixes check "
        "--json`. Per patch: its state on that release, whether its reproducer shows the bug on the upstream "
        "code and on the patched code (two fresh processes), and check's verdict. Then export + validate of "
        "the tiny model, the programs the row's kind names in grid.toml's `[cells]`: a *model* cell (a row that "
        "varies transformers only) runs the float programs, a *toolchain* cell (a row whose torch, torchao or "
        "ExecuTorch is not the default row's, the default row, the seed row) the quantized one too. The seed's "
        "fixed window on portable and XNNPACK (max abs diff and top-1 vs eager `use_cache=True` logits), and the "
        "KV-cache program (float32 on portable; 8da4w linears + 4w embeddings on XNNPACK) token by token vs eager "
        "greedy `generate` over twice the sliding window. A result marked "
        "*older package* was produced by an earlier version of the package sources than the checkout's. "
        '"N lowered programs reused": those exports traced to a graph (nodes, shapes, weights) that an earlier '
        "cell on the same torch/executorch/torchao had lowered, so the stored program was taken instead of "
        "lowering it again, and validated against this row's eager model like any other "
        "(`gemma3n_export_fixes/export/lowered_cache.py`; `-- --no-lowered-cache` lowers everything).",
        "",
        *cost_lines(),
        "![heat map](heatmap.svg)",
        "",
        "## Verdicts",
        "",
    ]
    lines += [f"- **{p.id}**: {verdict(p, found)} ({_upstream_link(p)})" for p in patches]
    lines += [f"- **kv-cache**: {kv_verdict(found)} (rows whose check covered it)"]
    lines += [
        "",
        "Toolchain patches (export scope: in place only while `export` traces and lowers; judged on the "
        "ExecuTorch and torch the rows pin):",
        "",
    ]
    lines += [f"- **{p.id}**: {toolchain_verdict(p, found)} ({p.upstream})" for p in _toolchain_patches()]
    problems = disagreements(found) + kv_disagreements(found)
    lines += ["", "Registry vs evidence: " + ("agree on every row." if not problems else "DISAGREE:")]
    lines += [f"- {problem}" for problem in problems]
    lines += next_lines(rows)
    header = ["row", "torch", "executorch", "transformers", *[p.id for p in patches], *EXPORT_COLUMNS, "check"]
    lines += ["", "## Cells", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        result = load_result(row)
        cells = [row["id"], row["torch"], row["executorch"], release_of(row, result)]
        if not result:
            cells += ["no result"] * (len(patches) + len(EXPORT_COLUMNS)) + [", ".join(row["tags"])]
        elif not result.get("patches"):
            cells += [f"check failed: {result.get('error', '')[:80]}"]
            cells += [""] * (len(patches) + len(EXPORT_COLUMNS) - 1) + ["FAILED"]
        else:
            by_id = {p["id"]: p for p in result["patches"]}
            cells += [_cell(by_id[p.id]) if p.id in by_id else "-" for p in patches]
            cells += [_export_cell(result, name) for name in EXPORT_COLUMNS]
            cell = result["cell"]
            older = ", next (not pinned)" if is_next(row) else "" if is_current(row) else ", *older package*"
            cached = sum(1 for e in result.get("exports", []) if "cached" in (e.get("lowering") or {}))
            reused = f" ({cached} lowered program{'s' * (cached != 1)} reused)" if cached else ""
            cells.append(
                f"{'OK' if result['ok'] else 'FAILED'}, {cell['ran_at'][:10]}, {cell['check_seconds']:.0f} s"
                f"{reused}{older}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


COLOURS = {"fixed": "#3c9a5f", "not-needed": "#b8c4cc", "ok": "#3c9a5f", "none": "#ffffff", "bad": "#d0453b"}


def svg(rows: list[Row]) -> str:
    patches = _patches()
    columns = [p.id for p in patches] + list(EXPORT_COLUMNS)
    cw, rh, left, top = 130, 22, 190, 60
    width, height = left + cw * len(columns) + 10, top + rh * len(rows) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="11">', f'<rect width="{width}" height="{height}" fill="#ffffff"/>']  # fmt: skip
    for j, name in enumerate(columns):
        out.append(f'<text x="{left + j * cw + cw / 2}" y="{top - 10}" text-anchor="middle">{html.escape(name)}</text>')
    for i, row in enumerate(rows):
        y = top + i * rh
        out.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{html.escape(row["id"])}</text>')
        result = load_result(row) or {}
        by_id = {p["id"]: p for p in result.get("patches", [])}
        for j, name in enumerate(columns):
            if name in by_id:
                v = by_id[name]["verdict"]
                colour, label = COLOURS.get(v, COLOURS["bad"]), v
            elif name in EXPORT_COLUMNS and result.get("exports") and _export_cell(result, name) != "-":
                text = _export_cell(result, name)
                if text.startswith("not run"):
                    colour, label = COLOURS["not-needed"], "not run"
                else:
                    colour, label = (COLOURS["ok"] if text.startswith("OK") else COLOURS["bad"]), text.split(" ")[0]
            else:
                colour, label = COLOURS["none"], "no result"
            x = left + j * cw
            out.append(f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{rh - 2}" fill="{colour}" stroke="#888"/>')
            out.append(f'<text x="{x + cw / 2}" y="{y + 15}" text-anchor="middle">{html.escape(label)}</text>')
    out.append(f'<text x="{left}" y="{height - 12}">green: fixed / validated; grey: not needed or not run by the cell, '
               'red: a failure (a KV cache refused included); white: no result yet</text>')  # fmt: skip
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_report(rows: list[Row] | None = None) -> list[Path]:
    rows = rows if rows is not None else load_rows()
    README.write_text(markdown(rows))
    HEATMAP.write_text(svg(rows))
    return [README, HEATMAP]
