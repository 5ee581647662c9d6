"""Run the Python examples of docs/losses.md, in order, in one namespace."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "losses.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_the_long_tail_loop():
    code = "\n".join(_blocks())
    for name in ("LDAMLoss", "DeferredReweighting", "SAM(", "CosineClassifier", "set_weight", "PerturbedGD"):
        assert name in code


def test_doc_examples_run(capsys):
    pytest.importorskip("smoothopt.sam")
    namespace: dict = {}
    for i, block in enumerate(_blocks()):
        exec(compile(block, f"{DOC.name}[block {i}]", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "per class:" in out and "'many'" in out and "'head'" in out
    # The loop trains the cosine head with LDAM + DRW + SAM: well above chance (0.2) on the frequent classes.
    acc = namespace["acc"]
    assert float(acc[:2].mean()) > 0.5
