"""A paper's ``--set`` keys are declared once, as Options, and read back typed through them
(``OPTIONS.read(request)``): the declared default is what a paper reads, no call site restates a
type, default or choices, and a bad value is the Option's own one-line error."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from repro.api import Option, Options, Request
from repro.artifacts import papers
from repro.config import ConfigError
from repro.runner import plan
from repro.scales import SCALES

PAPERS_DIR = Path(__file__).resolve().parent.parent / "repro" / "papers"


def _dirnames(artifact, request) -> list[str] | str:
    try:
        return [c.dirname for c in plan(artifact, request)]
    except ConfigError as e:  # an artifact may refuse a scale (the manifest leaves it out)
        return f"refused: {e}"


def _declared():
    return [(p, k, o) for p in papers().values() for k, o in p.options.items()]


def test_every_paper_declares_its_keys_as_options():
    for paper in papers().values():
        assert isinstance(paper.options, Options), paper.name
        assert all(isinstance(o, Option) for o in paper.options.values()), paper.name
    with pytest.raises(TypeError, match="must be declared as an Option"):
        Options({"k": ("a", "b")})


@pytest.mark.parametrize("paper,key,opt", [p for p in _declared() if p[2].default is not None],
                         ids=lambda v: v if isinstance(v, str) else getattr(v, "name", ""))
def test_the_declared_default_is_what_the_paper_reads(paper, key, opt):
    """Read without the key, a paper gets the declared default; planning every artifact at every scale
    with ``--set key=<default>`` gives the same runs (same hashes) as not giving the key."""
    default = opt.value(key, None)  # a default given as text parses like a given value
    assert paper.options.read(Request()).__getattr__(key) == default
    assert paper.options.read(None)[key] == default
    assert opt.parse(key, str(opt.default)) == default
    for artifact in paper.artifacts.values():
        for scale in SCALES:
            plain = _dirnames(artifact, Request(scale=scale))
            explicit = _dirnames(artifact, Request(scale=scale, options=((key, str(opt.default)),)))
            assert plain == explicit, (paper.name, artifact.name, scale, key)


def test_a_key_with_a_computed_default_is_read_as_given_or_the_papers_value():
    opts = papers()["glancenet"].options
    assert opts["depth"].default is None
    assert opts.read(Request(scale="smoke")).given("depth", 7) == 7
    assert opts.read(Request(scale="smoke", options=(("depth", "13"),))).given("depth", 7) == 13
    assert opts.read(Request(scale="smoke")).depth is None  # declared without a default
    with pytest.raises(TypeError, match="declares its default"):  # a declared default is not restated
        papers()["dgate"].options.read(Request()).given("hinge", "ovr")
    with pytest.raises(AttributeError, match="no option 'nope' is declared"):
        opts.read(Request()).nope
    with pytest.raises(KeyError):
        opts.read(Request())["nope"]


def test_no_call_site_restates_an_options_type_default_or_choices():
    assert not hasattr(Request, "option")  # the only way to read a key is through its declared Option
    for path in sorted(PAPERS_DIR.glob("*.py")):
        text = path.read_text()
        assert not re.search(r"\.option\(", text), path.name
        assert "OPTION_SPECS" not in text and "_parse_prs" not in text, path.name


@pytest.mark.parametrize("paper,artifact,key,raw", [
    ("glancenet", "table1", "alpha", "1.5"),
    ("glancenet", "table1", "bypass_after", "2"),
    ("glancenet", "table1", "growth", "0"),
    ("dcp", "fig-ratio", "prs", "0.3,1.0"),
    ("dcp", "table1", "warmup_frac", "1"),
    ("imta", "table2", "kl_reduction", "sum"),
    ("dgate", "table1", "hinge", "svm"),
    ("biasloss", "table4", "bias_scaling", "batch"),
])
def test_a_bad_value_is_the_options_one_line_error(paper, artifact, key, raw):
    p = papers()[paper]
    opt = p.options[key]
    with pytest.raises(ConfigError) as want:
        opt.parse(key, raw)
    message = str(want.value)
    assert "\n" not in message and f"--set {key}={raw}" in message
    valid = opt.valid_range()
    assert valid and valid.split(": ")[-1] in message  # names the valid choices or range
    with pytest.raises(ConfigError) as got:  # the paper, planning its runs directly (no pre-flight check)
        plan(p.artifact(artifact), Request(scale="smoke", options=((key, raw),)))
    assert str(got.value) == message
    with pytest.raises(ConfigError) as checked:  # the pre-flight check says the same
        p.check_options(((key, raw),))
    assert str(checked.value) == message


def test_a_choice_error_says_choose_one_of():
    with pytest.raises(ConfigError, match=r"^--set hinge=svm: choose one of: ovr, weston-watkins, crammer-singer$"):
        papers()["dgate"].options.read(Request(options=(("hinge", "svm"),))).hinge
