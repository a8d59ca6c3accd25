"""README.md and docs/*.md say only what works today: every ``python -m MODULE ...`` command in their
code blocks names a module that exists and flags that it defines (read from its ``--helpfull`` /
``--help`` output), every ``--config.a.b=...`` override names a field of the config file and variant
the command loads, and every relative link leads to a file."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.machinery
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_CHECKED = {"pytest"}  # the test command itself; CI runs it
FENCE = re.compile(r"^```(\S*)\s*$")
SEPARATORS = {"&&", "||", ";", "|"}


@dataclasses.dataclass(frozen=True)
class Command:
    where: str  # "README.md:12"
    module: str
    args: tuple[str, ...]

    def flags(self) -> dict[str, str | None]:
        """``--name[=value]`` arguments as {name: value}."""
        out = {}
        for arg in self.args:
            if arg.startswith("--"):
                name, _, value = arg[2:].partition("=")
                out[name] = value if "=" in arg else None
        return out


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, line with its ``\\`` continuations joined) of each line of the shell code
    blocks in a markdown text (blocks tagged python are code, not commands)."""
    lines, block, pending, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            block = None if block is not None else fence.group(1)
            continue
        if block is None or block == "python":
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    return lines


def commands_in(text: str, name: str) -> list[Command]:
    """The ``python -m`` commands of the shell code blocks of one markdown file."""
    found = []
    for number, line in shell_lines(text):
        if not re.search(r"python3? -m ", line):  # blocks also hold trees and tables, not shell
            continue
        words = shlex.split(line, comments=True)
        segment: list[str] = []
        for word in [*words, ";"]:
            if word not in SEPARATORS:
                segment.append(word)
                continue
            while segment and re.fullmatch(r"\w+=\S*", segment[0]):  # VAR=value prefixes
                segment.pop(0)
            if len(segment) >= 3 and re.fullmatch(r"python3?", segment[0]) and segment[1] == "-m":
                found.append(Command(f"{name}:{number}", segment[2], tuple(segment[3:])))
            segment = []
    return found


def all_commands() -> list[Command]:
    return [c for path in DOCS for c in commands_in(path.read_text(), path.relative_to(REPO).as_posix())
            if c.module not in NOT_CHECKED]


def help_text(module: str) -> str:
    """The module's flag help: absl's ``--helpfull`` (every defined flag), else argparse's ``--help``."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")

    def run(flag: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, flag], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)

    proc = run("--helpfull")
    if proc.returncode == 2 and "usage:" in proc.stdout + proc.stderr:
        proc = run("--help")  # argparse: it has --help only (and exits 2 on anything it does not know)
    return proc.stdout + proc.stderr


def defines(help_output: str, name: str) -> bool:
    """Whether a help listing defines ``--name``: absl's ``  --name:`` / ``  --[no]name:`` lines or
    argparse's ``  -n N, --name N`` (not a mention inside a usage example)."""
    pattern = rf"^\s+(?:-\w\S*(?: \S+)?, )*--(?:\[no\])?{re.escape(name)}(?:[\s=:,]|$)"
    return re.search(pattern, help_output, re.M) is not None


COMMANDS = all_commands()
MODULES = sorted({c.module for c in COMMANDS})


def module_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    """The module's spec, None where it (or its package) does not exist."""
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """--help output of every documented module that exists, two subprocesses at a time."""
    present = [m for m in MODULES if module_spec(m)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return dict(zip(present, pool.map(help_text, present)))


def load_config(spec: str):
    """``configs/X.py[:variant]`` -> its ConfigDict (what ml_collections' config file flag loads)."""
    path, _, variant = spec.partition(":")
    loader = importlib.util.spec_from_file_location(f"_doc_config_{pathlib.Path(path).stem}", REPO / path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def test_the_docs_have_commands_to_check():
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/training.md", "docs/downstream.md"} <= where, where
    assert {"hdvila_jax.main", "hdvila_jax.convert", "hdvila_jax.search"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_each_documented_module_exists(module):
    users = ", ".join(c.where for c in COMMANDS if c.module == module)
    assert module_spec(module) is not None, f"python -m {module} (in {users}) names no module in this checkout"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where}:{c.module}")
def test_each_documented_flag_is_defined(command, helps):
    if command.module not in helps:
        pytest.fail(f"{command.where}: python -m {command.module} does not exist")
    text = helps[command.module]
    assert "Traceback" not in text, f"python -m {command.module} --help failed:\n{text[-2000:]}"
    flags = command.flags()
    missing = [name for name in flags if "." not in name and not defines(text, name)]
    assert not missing, f"{command.where}: python -m {command.module} defines no flag {missing}"
    for name, value in flags.items():  # --config.a.b=... overrides of a --config=FILE[:variant]
        base, _, path = name.partition(".")
        if not path:
            continue
        assert flags.get(base), f"{command.where}: --{name} without --{base}=FILE"
        node = load_config(flags[base])
        for part in path.split("."):
            assert part in node, f"{command.where}: {flags[base]} has no field {name[len(base) + 1:]}"
            node = node[part]


def test_the_parser_reads_continuations_chains_and_comments():
    text = ("```\npip install -e . && JAX_PLATFORMS=cpu python -m a.b --x=1 \\\n    --y 'q r'  # --z\n"
            "# python -m commented.out\n```\n```python\npython -m not.a.command\n```\n")
    assert commands_in(text, "f.md") == [Command("f.md:2", "a.b", ("--x=1", "--y", "q r"))]
    assert Command("f", "m", ("--x=1", "--y", "--config.a=2")).flags() == {"x": "1", "y": None, "config.a": "2"}
    absl = "  --[no]json: print\n  --workdir: Run directory\n    python -m m --example=1\n"
    argparse = "options:\n  -o OUT, --output OUT  where\n  --check FIXTURE [FIXTURE ...]\n"
    assert defines(absl, "json") and defines(absl, "workdir") and not defines(absl, "example")
    assert defines(argparse, "output") and defines(argparse, "check") and not defines(argparse, "out")


def test_every_relative_link_of_the_docs_points_to_a_file():
    broken = [f"{path.relative_to(REPO)}: {match.group(1)}"
              for path in DOCS for match in re.finditer(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
              if "://" not in match.group(1) and not (path.parent / match.group(1)).exists()]
    assert not broken, "links to missing files:\n" + "\n".join(broken)
