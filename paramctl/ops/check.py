"""`check`: a repository's checkpoint rules, stated once in `[tool.paramctl]` (or `paramctl.toml`), run together.

Each rule set names files by globs (relative to the configuration file) and the facts they must satisfy. A rule
reuses the command that asserts the same fact (stat, diff, ties, scan); a file is opened once, header-only rules
read no data, and the finite rule and a reference match share one pass over the file's data.
"""

from __future__ import annotations

import glob
import os
import tomllib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paramctl.errors import ParamctlError
from paramctl.registry import open as open_tree
from paramctl.tree import Tree

CONFIG_NAMES = ("paramctl.toml", "pyproject.toml")

# key -> (expected Python type(s), what the README calls it)
RULE_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "files": (list, "a list of globs"),
    "format": (str, "a loader name"),
    "finite": (bool, "true or false"),
    "ties": (list, "a list of tie groups (lists of names)"),
    "ties-baseline": (str, "a path to a `ties --json` output"),
    "no-ties": (bool, "true or false"),
    "safe": (bool, "true or false"),
    "dtype": (str, "a dtype name"),
    "max-params": (int, "an integer"),
    "matches": (dict, "a table {reference, atol, rtol, ignore-dtype}"),
}
MATCH_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "reference": (str, "a path"),
    "atol": ((int, float), "a number"),
    "rtol": ((int, float), "a number"),
    "ignore-dtype": (bool, "true or false"),
}


class ConfigError(ParamctlError):
    """The configuration is wrong: names the file and the key (exit 2, so a typo never passes silently)."""

    def __init__(self, config: Path, where: str, problem: str) -> None:
        super().__init__(f"{config}: {where}: {problem}")


@dataclass(frozen=True)
class RuleSet:
    index: int
    files: tuple[Path, ...]  # the matching files, resolved and sorted
    rules: dict[str, Any]  # the rule keys (everything but `files`)


@dataclass(frozen=True)
class Config:
    path: Path
    rule_sets: tuple[RuleSet, ...]


@dataclass(frozen=True)
class Outcome:
    """One rule on one file."""

    file: str
    rule: str
    ok: bool
    expected: str
    found: str

    def as_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "ok": self.ok, "expected": self.expected, "found": self.found}


@dataclass
class CheckResult:
    config: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def as_json(self) -> dict[str, Any]:
        files: dict[str, list[Outcome]] = {}
        for outcome in self.outcomes:
            files.setdefault(outcome.file, []).append(outcome)
        return {
            "config": self.config,
            "ok": not self.failed,
            "files": [{"file": f, "rules": [o.as_json() for o in rules]} for f, rules in files.items()],
            "passed": len(self.outcomes) - len(self.failed),
            "failed": len(self.failed),
        }


# -- configuration -------------------------------------------------------------------------------------------------


def find_config(start: Path | None = None) -> Path | None:
    """The nearest `paramctl.toml`, or `pyproject.toml` with a `[tool.paramctl]` table, from `start` upwards."""
    folder = (start or Path.cwd()).resolve()
    for directory in (folder, *folder.parents):
        for name in CONFIG_NAMES:
            candidate = directory / name
            if candidate.is_file() and (name == "paramctl.toml" or "paramctl" in _read_toml(candidate).get("tool", {})):
                return candidate
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(path, "file", f"cannot be read as TOML ({error})") from None


def load_config(path: Path) -> Config:
    """Parse and validate every rule set; any unknown key, wrong type or glob matching nothing is a ConfigError."""
    document = _read_toml(path)
    table = document if path.name != "pyproject.toml" else document.get("tool", {}).get("paramctl", {})
    prefix = "" if path.name != "pyproject.toml" else "tool.paramctl."
    unknown = set(table) - {"check"}
    if unknown:
        raise ConfigError(path, f"[{prefix.rstrip('.') or 'top level'}]", f"unknown key {sorted(unknown)[0]!r}")
    entries = table.get("check", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(path, f"{prefix}check", "needs at least one [[check]] rule set")
    rule_sets = tuple(_rule_set(path, f"[[{prefix}check]] #{i + 1}", i, entry) for i, entry in enumerate(entries))
    return Config(path, rule_sets)


def _rule_set(config: Path, where: str, index: int, entry: Any) -> RuleSet:
    if not isinstance(entry, dict):
        raise ConfigError(config, where, "is not a table")
    _check_keys(config, where, entry, RULE_KEYS)
    if "files" not in entry:
        raise ConfigError(config, where, "needs `files`")
    files: set[Path] = set()
    for pattern in entry["files"]:
        if not isinstance(pattern, str):
            raise ConfigError(config, f"{where}: files", f"{pattern!r} is not a glob string")
        matched = glob.glob(pattern, root_dir=config.parent, recursive=True)
        if not matched:
            raise ConfigError(config, f"{where}: files", f"{pattern!r} matches no file")
        files.update((config.parent / m).resolve() for m in matched)
    rules = {key: value for key, value in entry.items() if key != "files"}
    if not rules:
        raise ConfigError(config, where, "states no rule (finite, ties, safe, dtype, max-params, matches, …)")
    if "ties" in rules and not all(
        isinstance(group, list) and len(group) >= 2 and all(isinstance(n, str) for n in group)
        for group in rules["ties"]
    ):
        raise ConfigError(config, f"{where}: ties", "each tie group is a list of two or more names")
    if "matches" in rules:
        _check_keys(config, f"{where}: matches", rules["matches"], MATCH_KEYS)
        if "reference" not in rules["matches"]:
            raise ConfigError(config, f"{where}: matches", "needs `reference`")
        rules["matches"] = dict(
            rules["matches"], reference=_existing(config, f"{where}: matches.reference", rules["matches"]["reference"])
        )
    if "ties-baseline" in rules:
        rules["ties-baseline"] = _existing(config, f"{where}: ties-baseline", rules["ties-baseline"])
    if "dtype" in rules:
        from paramctl.dtypes import BY_NAME

        if rules["dtype"] not in BY_NAME:
            raise ConfigError(config, f"{where}: dtype", f"unknown dtype {rules['dtype']!r}")
    return RuleSet(index, tuple(sorted(files)), rules)


def _check_keys(config: Path, where: str, table: Any, allowed: dict[str, tuple[Any, str]]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(config, where, "is not a table")
    for key, value in table.items():
        if key not in allowed:
            raise ConfigError(config, where, f"unknown key {key!r} (known: {', '.join(allowed)})")
        kind, described = allowed[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise ConfigError(config, f"{where}: {key}", f"must be {described}, not {value!r}")


def _existing(config: Path, where: str, relative: str) -> str:
    path = (config.parent / relative).resolve()
    if not path.exists():
        raise ConfigError(config, where, f"{relative!r} does not exist")
    return str(path)


# -- running -------------------------------------------------------------------------------------------------------


TIE_RULES = ("ties", "ties-baseline", "no-ties")
FINITE_RULES = ("finite",)


def run_check(
    config: Config,
    only: Iterable[str] | None = None,
    rules: Iterable[str] | None = None,
    threads: int | None = None,
) -> CheckResult:
    """Every rule on every matching file, files in parallel; `only` restricts the files, `rules` the rule keys
    (`paramctl ties` with no PATH runs just the tie rules)."""
    wanted = {Path(p).resolve() for p in only} if only is not None else None
    kept = set(rules) if rules is not None else None
    work: dict[Path, list[RuleSet]] = {}
    for rule_set in config.rule_sets:
        if kept is not None:
            rule_set = RuleSet(rule_set.index, rule_set.files, {k: v for k, v in rule_set.rules.items() if k in kept})
            if not rule_set.rules:
                continue
        for file in rule_set.files:
            if wanted is None or file in wanted:
                work.setdefault(file, []).append(rule_set)
    result = CheckResult(str(config.path))
    with ThreadPoolExecutor(threads or min(4, len(work) or 1)) as pool:
        for outcomes in pool.map(lambda item: _check_file(*item), work.items()):
            result.outcomes.extend(outcomes)
    return result


def _display(file: Path) -> str:
    try:
        return os.path.relpath(file, Path.cwd())
    except ValueError:
        return str(file)


def _check_file(file: Path, rule_sets: list[RuleSet]) -> list[Outcome]:
    rules: dict[str, Any] = {}
    for rule_set in rule_sets:
        rules.update(rule_set.rules)
    shown = _display(file)
    tree = open_tree(file, rules.get("format"))
    outcomes: list[Outcome] = []

    def add(rule: str, ok: bool, expected: str, found: str) -> None:
        outcomes.append(Outcome(shown, rule, ok, expected, found))

    for rule_set in rule_sets:
        for rule, value in rule_set.rules.items():
            if rule in HEADER_RULES:
                HEADER_RULES[rule](tree, value, add)
    data_rules = {rule: value for rule_set in rule_sets for rule, value in rule_set.rules.items() if rule in DATA_RULES}
    if data_rules:
        _data_rules(tree, data_rules, add)
    return outcomes


Add = Callable[[str, bool, str, str], None]


def _max_params(tree: Tree, limit: int, add: Add) -> None:
    from paramctl.ops.ties import unique_numel

    found = unique_numel(tree)
    add("max-params", found <= limit, f"at most {limit:,} parameters", f"{found:,}")


def _dtype(tree: Tree, expected: str, add: Add) -> None:
    wrong = [
        f"{name} ({t.dtype.name})" for name, t in tree.tensors() if t.dtype.is_floating and t.dtype.name != expected
    ]
    add(
        "dtype",
        not wrong,
        f"every floating tensor {expected}",
        ", ".join(wrong[:5]) + ("…" if len(wrong) > 5 else "") if wrong else f"all {expected}",
    )


def _ties(tree: Tree, groups: list[list[str]], add: Add) -> None:
    from paramctl.ops.ties import check_expectations, find_ties

    problems = check_expectations(find_ties(tree), groups, (name for name, _ in tree.tensors()))
    expected = ", ".join("=".join(group) for group in groups)
    add("ties", not problems, f"tied: {expected}", "; ".join(problems) or "all tied")


def _no_ties(tree: Tree, wanted: bool, add: Add) -> None:
    from paramctl.ops.ties import check_no_ties, find_ties

    if wanted:
        problems = check_no_ties(find_ties(tree))
        add("no-ties", not problems, "no tied tensors", "; ".join(problems) or "none")


def _ties_baseline(tree: Tree, baseline: str, add: Add) -> None:
    from paramctl.ops.ties import compare_baseline, find_ties, load_baseline

    problems = compare_baseline(find_ties(tree), load_baseline(baseline))
    add("ties-baseline", not problems, f"the tie groups of {os.path.relpath(baseline)}", "; ".join(problems) or "same")


def _safe(tree: Tree, wanted: bool, add: Add) -> None:
    from paramctl.ops.scan import scan

    if wanted:
        result = scan(tree.file)
        found = ", ".join(sorted({f"{g.module}.{g.name}" for g in result.dangerous}))
        problems = "; ".join(result.problems)
        ok = not found and not problems
        add("safe", ok, "nothing dangerous referenced", found or problems or "nothing dangerous")


HEADER_RULES: dict[str, Callable[[Tree, Any, Add], None]] = {
    "max-params": _max_params,
    "dtype": _dtype,
    "ties": _ties,
    "no-ties": _no_ties,
    "ties-baseline": _ties_baseline,
    "safe": _safe,
}
DATA_RULES = ("finite", "matches")


def _data_rules(tree: Tree, rules: dict[str, Any], add: Add) -> None:
    """The finite rule and a reference match, in one pass over the file's data when both apply."""
    finite = rules.get("finite") is True
    match = rules.get("matches")
    nonfinite: dict[str, int] | None = None
    if match is not None:
        from paramctl.ops.diff import DiffOptions, diff_trees

        options = DiffOptions(
            atol=float(match.get("atol", 0.0)),
            rtol=float(match.get("rtol", 0.0)),
            ignore_dtype=bool(match.get("ignore-dtype", False)),
            count_nonfinite_a=finite,
        )
        result = diff_trees(tree, open_tree(match["reference"]), options)
        reference = os.path.relpath(match["reference"])
        tolerance = f"atol={options.atol:g}, rtol={options.rtol:g}"
        found = f"{result.different_count} differences" + _first_difference(result)
        add("matches", result.equal, f"equal to {reference} ({tolerance})", "equal" if result.equal else found)
        nonfinite = result.nonfinite_a
    if finite:
        counted = nonfinite or {}
        unread = [name for name, _ in tree.tensors() if name not in counted]  # not compared with the reference
        if unread:
            from paramctl.ops.stats import stat_tree

            stats = stat_tree(tree, [glob.escape(name) for name in unread])
            counted = counted | {row.name: row.moments.nonfinite for row in stats.tensors if row.moments is not None}
        nonfinite = {name: count for name, count in counted.items() if count}
        found = ", ".join(f"{name} ({count})" for name, count in list(nonfinite.items())[:5])
        add("finite", not nonfinite, "no NaN or Inf", f"non-finite values in {found}" if nonfinite else "all finite")


def _first_difference(result: Any) -> str:
    json = result.as_json()
    for key in ("only_in_a", "only_in_b", "changed", "dropped_ties", "values_changed", "metadata_changed"):
        if json.get(key):
            first = json[key][0]
            name = first.get("name") or first.get("key")
            reason = first.get("reason") or key.replace("_", " ")
            return f", first: {name} ({reason})"
    return ""
