import subprocess
import sys

import pytest

import dexml_hf


@pytest.mark.parametrize("name", [n for n in dexml_hf.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    assert getattr(dexml_hf, name) is not None


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError):
        dexml_hf.not_a_name  # noqa: B018


def test_import_is_light():
    """``import dexml_hf`` must not pull in torch or evaluate (the CLI's --help stays fast)."""
    code = "import sys, dexml_hf; print('torch' in sys.modules, 'evaluate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_tiny_model_fixture_embeds(tiny_model):
    emb = tiny_model.encode(["a query", "a label"], convert_to_tensor=True)
    assert emb.shape == (2, 32)
