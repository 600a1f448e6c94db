"""`paramctl check`: run the repository's checkpoint rules from pyproject.toml / paramctl.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from paramctl.cli.app import JsonOption, app
from paramctl.cli.errors import EXIT_DIFFERENT, escape, fail, handles_errors
from paramctl.cli.render import print_json

if TYPE_CHECKING:  # the check machinery (tomllib, thread pools) is imported only when a check runs
    from paramctl.ops.check import CheckResult, Config, Outcome

ConfigOption = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        help="The configuration file (default: the nearest paramctl.toml, or pyproject.toml with [tool.paramctl]).",
        metavar="FILE",
    ),
]
AnnotationsOption = Annotated[
    bool,
    typer.Option(
        "--github-annotations", help="Also print failures as GitHub Actions annotations (on by default under Actions)."
    ),
]


def configured(config: Path | None, required: bool = True) -> Config | None:
    """The configuration to use: `--config`, else the nearest one; None (or a usage error) when there is none."""
    from paramctl.ops.check import find_config, load_config

    path = config or find_config()
    if path is None:
        if required:
            raise fail("no configuration found: add [tool.paramctl] to pyproject.toml, or pass --config")
        return None
    if not path.is_file():
        raise fail(f"{path}: no such configuration file")
    return load_config(path)


def run_configured_rules(rules: tuple[str, ...], what: str, json: bool) -> None:
    """`paramctl ties` / `stat --check-finite` without PATH: the configuration's rules of that kind, or exit 2."""
    config = configured(None, required=False)
    if config is None:
        raise fail(f"missing PATH (and no configuration with {what} rules: see `paramctl check`)")
    from paramctl.ops.check import run_check

    result = run_check(config, rules=rules)
    if not result.outcomes:
        raise fail(f"{config.path}: states no {what} rules; pass a PATH")
    report(result, json, annotations=False)


def report(result: CheckResult, json: bool, annotations: bool) -> None:
    """Print the outcome (one line per failed rule, then a summary) and exit 1 when a rule failed."""
    annotations = annotations or os.environ.get("GITHUB_ACTIONS") == "true"
    if json:
        print_json(result.as_json())
    else:
        for outcome in result.failed:
            typer.echo(escape(f"{outcome.file}: {outcome.rule}: expected {outcome.expected}; found {outcome.found}"))
        files = len({o.file for o in result.outcomes})
        typer.echo(
            f"{files} file{'s' if files != 1 else ''}, {len(result.outcomes)} rules: "
            + (f"{len(result.failed)} failed" if result.failed else "all passed")
        )
    if annotations:
        for outcome in result.failed:
            typer.echo(github_annotation(outcome))
    if result.failed:
        raise typer.Exit(EXIT_DIFFERENT)


def github_annotation(outcome: Outcome) -> str:
    """A workflow command that GitHub shows as an error annotation on the pull request."""

    def clean(text: str, property_: bool = False) -> str:
        text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return text.replace(":", "%3A").replace(",", "%2C") if property_ else text

    message = f"expected {outcome.expected}; found {outcome.found}"
    return f"::error file={clean(outcome.file, True)},title={clean('paramctl ' + outcome.rule, True)}::{clean(message)}"


@app.command("check")
@handles_errors
def check_command(
    files: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Check only these files (those a rule set matches); default: every matching file.",
            metavar="[FILE]...",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    github_annotations: AnnotationsOption = False,
    json: JsonOption = False,
) -> None:
    """Run every rule of the configuration on every file it matches. Exit 0 all hold, 1 a rule failed, 2 bad config."""
    rules = configured(config)
    assert rules is not None
    from paramctl.ops.check import run_check

    report(run_check(rules, files), json, github_annotations)
