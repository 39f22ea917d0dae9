"""Settings described once: a config dataclass field carries its help text, choices and checks, and the command
line options, the app's validation and the scripts' parsers are generated from it.

    @dataclass
    class TrainConfig:
        prompter: str = setting("pad", "prompt design (default: %(default)s)", choices=lambda: PROMPTERS)
        steps: int | None = setting(None, "a step budget instead of epochs", low=1, label="Steps")

* :func:`setting` - a ``dataclasses.field`` with that metadata. ``help`` and ``choices`` may be callables, read
  when a parser is built or a value checked, so kinds registered later (``register_prompter``...) appear.
* :func:`add_arguments` - argparse options for the fields (all, or some), with optional other defaults.
* :func:`check_value` / :func:`check_config` - the same checks everywhere, as :class:`VPError` messages.
* :func:`parse_value` - a value from a form (the app's numbers arrive as floats) -> the field's type, checked.
* :func:`choices` - the current choices of a field (the app's radio buttons).

A new setting is one field (plus its registry entry when it names a kind); nothing else needs editing.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Callable, Iterable

from .errors import VPError


def setting(default=dataclasses.MISSING, help: str | Callable[[], str] = "", *, choices=None, low=None,
            high=None, low_open: bool = False, label: str | None = None, hint: str = "", flag: str | None = None,
            cli: bool = True, check: Callable[[object], None] | None = None):
    """A dataclass field with what the CLI, the app and the checks need to know about it.

    ``choices``: an iterable of allowed values (or a callable giving one: a registry). ``low`` / ``high``:
    bounds (``low_open``: strictly greater than ``low``); None values always pass (None means "the default").
    ``label``: the name in messages ("Batch size"); ``hint``: added to a bound's message. ``flag``: the option
    instead of ``--field-name`` (``--no-amp`` for a bool that defaults to True). ``cli=False``: no option.
    ``check``: a rule of its own for a value that is given (raises :class:`VPError`; e.g. a device's name), run
    with the others everywhere, the CLI's parsing included."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open, "label": label,
            "hint": hint, "flag": flag, "cli": cli, "check": check}
    return dataclasses.field(default=default, metadata={"setting": meta})


def _meta(f: dataclasses.Field) -> dict:
    return f.metadata.get("setting", {})


def _resolve(x):
    return x() if callable(x) else x


def _field(cls, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(name)


def _base_type(cls, name: str) -> type:
    """The field's type without ``| None`` (str for anything unusual)."""
    t = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    t = args[0] if args else t
    return t if t in (bool, int, float, str) else str


def choices(cls, name: str) -> list | None:
    """The allowed values of a field now (a registry's keys, in registration order), or None."""
    c = _resolve(_meta(_field(cls, name)).get("choices"))
    return None if c is None else list(c)


def label(cls, name: str) -> str:
    return _meta(_field(cls, name)).get("label") or name.replace("_", " ").capitalize()


def check_value(cls, name: str, value, *, low=None, high=None) -> None:
    """Raise a :class:`VPError` when ``value`` is not allowed for the field. ``low`` / ``high`` narrow the
    field's own bounds (e.g. the app's largest batch)."""
    if value is None:
        return
    m = _meta(_field(cls, name))
    allowed = choices(cls, name)
    if allowed is not None and value not in allowed:
        raise VPError(f"Unknown {name.replace('_', ' ')} {value!r}; choose one of {', '.join(map(str, allowed))}.")
    if m.get("check") is not None:
        m["check"](value)
    lo = m.get("low") if low is None else low
    hi = m.get("high") if high is None else high
    if lo is None and hi is None:
        return
    too_low = lo is not None and (value <= lo if m.get("low_open") else value < lo)
    if too_low or (hi is not None and value > hi) or (isinstance(value, float) and math.isnan(value)):
        if lo is not None and hi is not None:
            what = f"between {lo} and {hi}"
        elif lo is not None:
            what = (f"greater than {lo}" if m.get("low_open") else f"at least {lo}")
            what = "a positive number" if m.get("low_open") and lo == 0 else what
        else:
            what = f"at most {hi}"
        raise VPError(f"{label(cls, name)} must be {what}{m.get('hint', '')}.")


def check_config(cfg) -> None:
    """Check every field of a config instance (see :func:`check_value`)."""
    for f in dataclasses.fields(cfg):
        if _meta(f):
            check_value(type(cfg), f.name, getattr(cfg, f.name))


def parse_value(cls, name: str, value, *, required: bool = False, **bounds):
    """A value from a form -> the field's type (a whole number for ints: 3.0 is fine, 2.5 is not), checked.
    None is "the default" for fields whose default is None, unless ``required``."""
    t = _base_type(cls, name)
    if value is None:
        if required or _field(cls, name).default is not None:
            raise VPError(f"{label(cls, name)} must be given.")
        return None
    if t in (int, float):
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise VPError(f"{label(cls, name)} must be a number, not {value!r}.") from None
        if t is int:
            if not math.isfinite(f) or f != int(f):
                raise VPError(f"{label(cls, name)} must be a whole number, not {value}.")
            value = int(f)
        else:
            value = f
    elif t is bool:
        value = bool(value)
    check_value(cls, name, value, **bounds)
    return value


def add_arguments(parser, cls, names: Iterable[str] | None = None, *, defaults: dict | None = None,
                  helps: dict | None = None) -> None:
    """Add an option for each field of ``cls`` (or only ``names``, in the class's order) to ``parser`` (a parser
    or an argument group). ``defaults`` / ``helps`` replace a field's default / help text. A bool that defaults to
    False is a ``store_true`` flag; one with its own ``flag`` (``--no-amp``) is ``store_false``; one whose default
    is changed to True is ``--x/--no-x``."""
    wanted = None if names is None else set(names)
    defaults, helps = defaults or {}, helps or {}
    for f in dataclasses.fields(cls):
        m = _meta(f)
        if not m or not m.get("cli", True) or (wanted is not None and f.name not in wanted):
            continue
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        kw = {"help": _resolve(helps.get(f.name, m.get("help")))}
        flag = m.get("flag") or "--" + f.name.replace("_", "-")
        t = _base_type(cls, f.name)
        if t is bool:
            if m.get("flag") and f.default is True:
                kw.update(dest=f.name, action="store_false")
            elif default:
                kw.update(action=argparse.BooleanOptionalAction, default=True)
            else:
                kw.update(action="store_true")
        else:
            kind = checked_type(m["check"], t) if m.get("check") else t if t is not str else None
            kw.update(default=default, type=kind)
            allowed = choices(cls, f.name)
            if allowed is not None:
                kw["choices"] = allowed
        parser.add_argument(flag, **{k: v for k, v in kw.items() if v is not None or k == "default"})


def checked_type(check: Callable[[object], None], kind: type):
    """An argparse type: ``kind`` of the text, then ``check`` (its VPError becomes argparse's own error)."""
    def parse(text: str):
        value = kind(text)
        try:
            check(value)
        except VPError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value
    return parse


def from_args(cls, namespace, **extra):
    """A config from parsed options (fields the parser does not have keep their defaults) and ``extra``."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    return cls(**{**values, **extra})


def listing(registry: dict, fmt: str = "{name} = {description}") -> str:
    """``"a = what a is, b = what b is"`` from a registry whose entries have a ``description`` (or are text)."""
    return ", ".join(fmt.format(name=k, description=getattr(v, "description", v)) for k, v in registry.items())
