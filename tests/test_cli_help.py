"""Every flag of every command says what it does (issue 31): walked over the whole parser, so
a flag added without help fails here, and every command's ``--help`` prints."""

from __future__ import annotations

import argparse

import pytest

from stfm.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
              ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(command words, parser)`` of the parser and every subcommand below it."""
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, (*path, name))
    return out


COMMANDS = _commands(build_parser())


def test_the_walk_finds_the_commands() -> None:
    paths = {p for p, _ in COMMANDS}
    assert {("run",), ("replay", "pretrain"), ("replay", "backtest"), ("alerts", "report"),
            ("topics", "create"), ("demo",)} <= paths


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "stfm")
def test_every_flag_and_subcommand_has_help(path: tuple[str, ...]) -> None:
    parser = dict(COMMANDS)[path]
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            missing += [f"subcommand {c.dest}" for c in action._choices_actions
                        if not (c.help or "").strip()]
            continue
        if action.help is argparse.SUPPRESS:          # a hidden deprecated alias
            continue
        if not (action.help or "").strip():
            missing.append("/".join(action.option_strings) or action.dest)
    assert not missing, f"stfm {' '.join(path)}: no help for {', '.join(missing)}"


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "stfm")
def test_help_of_every_command_prints(path: tuple[str, ...],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*path, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: stfm") and "(default: None)" not in out


def test_the_training_flags_say_their_keys_meanings(capsys: pytest.CaptureFixture[str]) -> None:
    """`replay pretrain`'s training flags: the meaning of their [pretrain]/[foundation] key,
    from the comment beside its field, with each table's default."""
    from stfm.cli import TRAINING_FLAGS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["replay", "pretrain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "the training key" not in out                  # every flag got its meaning
    for name in TRAINING_FLAGS:
        assert f"pretrain.{name} = " in out or f"foundation.{name} = " in out, name
        assert f"--{name.replace('_', '-')} {name.upper()} [" not in out, f"{name}: no meaning"
    assert "rows of the training split (0 = 80 % of the data) [pretrain.train_rows = 0]" in out
    assert "foundation.batch_size = 64: windows per batch" in out
