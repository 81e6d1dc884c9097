"""Every example in the README runs as written: its Python blocks are executed (in a folder holding small
stand-ins for the files they name), and every `deeplab-*` command line of its bash blocks, and of each
command's own --help examples, parses with that command's options (an unknown or misspelt option, a bad
choice or a missing value fails here). `bash scripts/...` lines name scripts that exist."""

from __future__ import annotations

import re
import shlex
import tomllib
from importlib import import_module

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from .conftest import REPO, net_from_text, write_random_weights

README = (REPO / "README.md").read_text(encoding="utf-8")

# A stand-in for DeepLab's test.prototxt: the same ${NUM_LABELS} and ${EXP} placeholders, any input size.
TEMPLATE_NET = """name: "readme_net"
input: "data"
input_shape { dim: 1 dim: 3 dim: 17 dim: 17 }
layer { name: "fc8_${EXP}" type: "Convolution" bottom: "data" top: "fc8_interp"
        convolution_param { num_output: ${NUM_LABELS} kernel_size: 3 pad: 1 } }
"""


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def command_lines(text: str) -> list[list[str]]:
    """Each shell command of a block as tokens: continuation lines joined, comments and redirections dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        for index, token in enumerate(tokens):
            if token in (">", ">>", "|", "2>", "&&", ";") or token.startswith((">", "2>")):
                tokens = tokens[:index]
                break
        if tokens:
            commands.append(tokens)
    return commands


# Tools the README shows beside ours (installing an extra, starting a Ray cluster).
OTHER_TOOLS = {"pip", "ray", "python", "python3"}


def entry_points() -> dict[str, click.Command]:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    commands = {}
    for name, target in scripts.items():
        module, attribute = target.split(":")
        commands[name] = getattr(import_module(module), attribute)
    return commands


def readme_commands() -> list[tuple[str, list[str]]]:
    found = []
    for block in code_blocks("bash"):
        for tokens in command_lines(block):
            found.append((" ".join(tokens), tokens))
    return found


def help_examples() -> list[tuple[str, list[str]]]:
    """The example lines under 'Examples:' in each command's docstring (its --help)."""
    found = []
    for name, command in entry_points().items():
        text = command.help or ""
        if "Examples:" not in text:
            continue
        for tokens in command_lines(text.split("Examples:", 1)[1]):
            if tokens[0] == name:
                found.append((" ".join(tokens), tokens))
    return found


def test_the_readme_has_examples_of_every_command():
    names = {tokens[0] for _, tokens in readme_commands()}
    assert set(entry_points()) <= names, set(entry_points()) - names
    assert len(code_blocks("python")) >= 1


@pytest.mark.parametrize("line, tokens", readme_commands() + help_examples(), ids=lambda v: v if isinstance(v, str)
                         else None)
def test_each_command_example_parses_with_the_commands_options(line, tokens, monkeypatch):
    import torch

    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):  # VAR=value before the command
        tokens = tokens[1:]
    if tokens[0] == "bash":
        assert (REPO / tokens[1]).is_file(), f"{line}: no such script"
        return
    if tokens[0] in OTHER_TOOLS:  # setup lines for other tools (pip, a Ray cluster): not ours to parse
        return
    commands = entry_points()
    assert tokens[0] in commands, f"{line}: not one of this package's commands ({', '.join(commands)})"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # examples with --crf-device cuda
    command = commands[tokens[0]]
    try:
        with command.make_context(tokens[0], tokens[1:]):  # parses and checks every option; runs nothing
            pass
    except click.UsageError as exc:
        if "does not exist" not in exc.format_message():  # the user's files are not here; the syntax is
            pytest.fail(f"{line}: {exc.format_message()}")


def test_an_unknown_option_fails_the_parse_check():
    """The check above can fail: a misspelt option is a UsageError from make_context."""
    command = entry_points()["deeplab-run"]
    with pytest.raises(click.UsageError, match="--crf-preseet"):
        command.make_context("deeplab-run", ["--onnx", "m.onnx", "photos/", "--crf-preseet", "v2"])


@pytest.fixture()
def readme_files(tmp_path, monkeypatch):
    """The files the Python example names, small: test.prototxt (with DeepLab's placeholders), a caffemodel for
    it, converted/model.safetensors and model.onnx from deeplab-convert, and photo.jpg."""
    from caffe2torch.cli import convert

    (tmp_path / "test.prototxt").write_text(TEMPLATE_NET)
    concrete = TEMPLATE_NET.replace("${EXP}", "voc12").replace("${NUM_LABELS}", "21")
    write_random_weights(net_from_text(concrete), tmp_path / "train_iter_20000.caffemodel")
    result = CliRunner().invoke(convert.main, [str(tmp_path / "test.prototxt"),
                                               str(tmp_path / "train_iter_20000.caffemodel"), "-o",
                                               str(tmp_path / "converted"), "--define", "NUM_LABELS=21",
                                               "--define", "EXP=voc12"])
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_python_examples_run_as_written(readme_files):
    for block in code_blocks("python"):
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
        if "labels" in namespace:  # the runner example: labels for the photo, one per pixel
            assert namespace["labels"].shape == (40, 56) and namespace["labels"].dtype == np.uint8
        if "blobs" in namespace:
            assert {"data", "fc8_interp"} <= set(namespace["blobs"])
            assert tuple(namespace["scores"].shape) == (1, 21, 513, 513)


def test_every_name_a_python_example_imports_is_used():
    """The README once imported a name it never used; each imported name appears again in its block."""
    for block in code_blocks("python"):
        imported = []
        for match in re.finditer(r"^(?:from \S+ )?import (.+)$", block, flags=re.M):
            imported += [part.split(" as ")[-1].strip() for part in match.group(1).split(",")]
        for name in imported:
            uses = len(re.findall(rf"\b{re.escape(name)}\b", block))
            assert uses >= 2, f"the README's Python example imports {name} and never uses it"


def test_every_picture_the_readme_shows_exists():
    """docs/eval-panel.png and docs/eval-chart.png are made by the main job (scripts/main.sh) and copied."""
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert {"docs/eval-panel.png", "docs/eval-chart.png"} <= set(pictures)
    for picture in pictures:
        with Image.open(REPO / picture) as image:
            assert image.format == "PNG" and image.width >= 400, picture


def test_every_option_of_every_command_has_a_description():
    for name, command in entry_points().items():
        undescribed = [param.opts[0] for param in command.params if isinstance(param, click.Option) and not param.help]
        assert not undescribed, f"{name} --help: no description for {', '.join(undescribed)}"
