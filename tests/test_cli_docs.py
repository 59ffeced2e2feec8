"""docs/cli.md and the README's commands: what they show is what the CLI accepts and writes."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml
from conftest import ROOT
from docopt import docopt

import rex as rex_cli
from rex_workers.cli import oneliners
from rex_workers.cli.check import Report

CLI = (ROOT / "docs" / "cli.md").read_text()
README = (ROOT / "README.md").read_text()


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    found, language, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                found.append((language, "\n".join(body)))
                language = None
        elif language is not None:
            body.append(line)
    return found


def command_lines(text: str) -> list[str]:
    """Every `rex …` command of the shell blocks and of the $-prompted examples."""
    lines = []
    for language, body in blocks(text):
        if language not in ("", "sh"):
            continue
        for line in body.splitlines():
            if language == "" and not line.startswith("$ "):
                continue  # output or a usage table: only prompted lines are commands
            line = line.removeprefix("$ ").split("  #")[0].strip()
            usage_syntax = any(c in line for c in "[<…|")  # a usage line, not a command
            if line.startswith("rex ") and not usage_syntax:
                lines.append(line)
    return lines


@pytest.mark.parametrize("line", sorted(set(command_lines(CLI) + command_lines(README))))
def test_every_documented_command_line_parses(line: str) -> None:
    if line.startswith("rex statsu") or "--foregroud" in line:
        return  # the page's examples of mistakes
    argv = shlex.split(line)[1:]
    docopt(rex_cli.__doc__, argv=argv)  # raises DocoptExit on anything the usage refuses


def test_the_one_liners_of_the_page_are_in_the_readme() -> None:
    for kind in oneliners.KINDS:
        assert f"rex {kind} " in README, kind


def test_the_page_shows_the_files_the_one_liners_write(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shown = [yaml.safe_load(body.replace("/srv/app", str(tmp_path)))
             for language, body in blocks(CLI) if language == "yaml"]
    commands = ["rex proxy --from 127.0.0.1:8080 --to localhost:3000 --to localhost:3001",
                "rex wsgi myapp:app --static /static=./static"]
    assert all(c in " ".join(CLI.split()) for c in commands)
    for command, expected in zip(commands, shown, strict=True):
        argv = shlex.split(command)[1:]
        args = docopt(rex_cli.__doc__, argv=argv)
        one = oneliners.from_args(argv[0], args, None, argv)
        assert oneliners.document(one)[0] == expected, command


def test_the_json_example_has_the_report_keys() -> None:
    (example,) = [body for language, body in blocks(CLI) if language == "json"]
    assert json.loads(example).keys() == json.loads(Report("x").as_json()).keys()
