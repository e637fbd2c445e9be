"""Students: architecture, interface, frozen BN, checkpoints and weight sources."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ams_ros.core.models.labels import CITYSCAPES
from ams_ros.core.models.student import DEFAULT_INPUT_SIZE, build_student, predict, train_mode_frozen_bn, to_input
from ams_ros.core.models.weights import load_student, read_checkpoint, save_student_checkpoint
from ams_ros.core.models.params import fingerprint, num_params

DEEPLAB, LRASPP = "deeplabv3_mobilenet_v2", "lraspp_mobilenet_v3_large"


@pytest.fixture(scope="module")
def deeplab21():
    torch.manual_seed(0)
    return build_student(DEEPLAB, num_classes=21)


def test_default_input_size():
    assert DEFAULT_INPUT_SIZE == (512, 256)


def test_deeplab_param_count_matches_paper(deeplab21):
    # paper: about 2.1 M parameters (MobileNetV2 1.0 without the 1280 conv + mobile DeepLab head)
    assert 2_050_000 <= num_params(deeplab21) <= 2_150_000
    assert list(dict(deeplab21.named_parameters()))[-2:] == ["classifier.weight", "classifier.bias"]


def test_deeplab_output_stride_16_with_tf_dilations(deeplab21):
    dws = [b.conv[-3][0] for b in list(deeplab21.backbone)[1:]]
    assert len(dws) == 17
    assert [d.dilation[0] for d in dws[13:]] == [1, 2, 2, 2]  # block 13 rate 1, 14-16 rate 2
    assert dws[13].stride == (1, 1) and dws[6].stride == (2, 2)
    feats = deeplab21.backbone(torch.zeros(1, 3, 64, 128))
    assert feats.shape == (1, 320, 4, 8)


@pytest.mark.parametrize("name,classes", [(DEEPLAB, 7), (LRASPP, 5)])
def test_output_shape_at_input_size(name, classes):
    model = build_student(name, num_classes=classes).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 128))
    assert isinstance(out, torch.Tensor) and out.shape == (2, classes, 64, 128)
    assert torch.isfinite(out).all()


def test_normalisation_buffers_are_not_parameters(deeplab21):
    names = {n for n, _ in deeplab21.named_parameters()}
    assert not any(n.startswith("normalize") for n in names)
    assert "normalize.mean" in deeplab21.state_dict()


def test_unknown_student_lists_valid_names():
    with pytest.raises(ValueError, match="deeplabv3_mobilenet_v2.*lraspp_mobilenet_v3_large"):
        build_student("resnet_ultra", 3)


@pytest.mark.parametrize("name", [DEEPLAB, LRASPP])
def test_bn_stays_frozen_through_a_training_step(name):
    torch.manual_seed(0)
    model = build_student(name, num_classes=4)
    bn_buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    fp = fingerprint(model)
    model.train()
    train_mode_frozen_bn(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.state_dict())
    loss = F.cross_entropy(model(torch.rand(2, 3, 64, 64)), torch.randint(0, 4, (2, 64, 64)))
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in bn_buffers.items())
    assert any(not torch.equal(after[k], before[k]) for k in after if k.endswith("weight"))
    assert all(not m.training for m in bns) and fingerprint(model) == fp
    assert all(not m.training for m in copy.deepcopy(model).modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_random_init_trains_with_frozen_bn():
    """From scratch with BN frozen to identity (the synthetic demo's case) the loss must fall."""
    torch.manual_seed(0)
    model = train_mode_frozen_bn(build_student(DEEPLAB, num_classes=2))
    x = torch.rand(4, 3, 32, 64) * 0.3
    y = torch.zeros(4, 32, 64, dtype=torch.long)
    for i, (r, c) in enumerate([(0, 0), (8, 16), (16, 32), (4, 40)]):
        x[i, 0, r:r + 16, c:c + 24] = 1.0  # red blocks are class 1
        y[i, r:r + 16, c:c + 24] = 1
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_to_input_and_predict_sizes(deeplab21):
    imgs = [np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8),
            np.zeros((64, 128, 3), dtype=np.uint8)]
    x = to_input(imgs, size=(128, 64))
    assert x.shape == (2, 3, 64, 128) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x[1].abs().max()) == 0.0
    deeplab21.train()
    labels = predict(deeplab21, imgs, size=(128, 64))
    assert [lab.shape for lab in labels] == [(50, 70), (64, 128)]
    assert all(lab.dtype == np.uint8 and lab.max() < 21 for lab in labels)
    assert deeplab21.training  # predict restores the caller's mode
    deeplab21.eval()
    with pytest.raises(ValueError, match="uint8"):
        to_input([np.zeros((8, 8), dtype=np.uint8)])


def test_checkpoint_round_trip_reproduces_outputs(tmp_path, caplog):
    torch.manual_seed(1)
    model = load_student(DEEPLAB, num_classes=5, weights=None).eval()
    path = save_student_checkpoint(model, tmp_path / "s.pt", DEEPLAB, 5, CITYSCAPES.restrict(
        ["road", "car", "sky", "person", "building"])[0])
    meta = read_checkpoint(path)
    assert meta["name"] == DEEPLAB and meta["num_classes"] == 5 and meta["label_space"]["class_names"][1] == "car"
    x = torch.rand(1, 3, 64, 128)
    with caplog.at_level(logging.INFO):
        again = load_student(DEEPLAB, num_classes=5, weights=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert fingerprint(model) == fingerprint(again)
    # a plain state_dict works too
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    plain = load_student(DEEPLAB, num_classes=5, weights=tmp_path / "plain.pth").eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))


def test_checkpoint_other_class_count_reinits_only_classifier(tmp_path):
    torch.manual_seed(2)
    src = build_student(DEEPLAB, num_classes=21)
    save_student_checkpoint(src, tmp_path / "voc.pt", DEEPLAB, 21)
    dst = load_student(DEEPLAB, num_classes=7, weights=tmp_path / "voc.pt")
    s, d = src.state_dict(), dst.state_dict()
    assert d["classifier.weight"].shape == (7, 256, 1, 1)
    assert all(torch.equal(s[k], d[k]) for k in d if not k.startswith("classifier."))


def test_checkpoint_errors(tmp_path):
    save_student_checkpoint(build_student(LRASPP, 3), tmp_path / "l.pt", LRASPP, 3)
    with pytest.raises(ValueError, match="lraspp_mobilenet_v3_large"):
        load_student(DEEPLAB, 3, weights=tmp_path / "l.pt")
    with pytest.raises(FileNotFoundError):
        load_student(DEEPLAB, 3, weights=tmp_path / "missing.pt")
    torch.save({"backbone.0.0.weight": torch.zeros(3)}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="do not fit"):
        load_student(DEEPLAB, 3, weights=tmp_path / "junk.pt")


def test_random_init_is_logged(caplog):
    with caplog.at_level(logging.WARNING):
        load_student(DEEPLAB, 3, weights=None)
    assert "RANDOM" in caplog.text


def test_torchvision_download_failure_is_clear(monkeypatch, tmp_path):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    for name in (DEEPLAB, LRASPP):
        with pytest.raises(RuntimeError, match="can't be downloaded here.*local checkpoint"):
            load_student(name, 5, weights="torchvision")


# ------------------------------------------------------------------------------------------
# Device-side edge inference and reduced precision (issue #14)
# ------------------------------------------------------------------------------------------

# float32 -> reduced precision label agreement, the threshold a precision must reach to be offered:
# bfloat16 keeps 8 mantissa bits (measured 0.990 random-init / 0.999 TFLite-imported), float16 10.
AGREEMENT = {"bfloat16": 0.97, "float16": 0.99}


def _fp16_autocast_on_cpu() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.functional.conv2d(torch.rand(1, 3, 4, 4), torch.rand(2, 3, 1, 1))
        return True
    except RuntimeError:
        return False


def _precisions():
    return ["bfloat16", pytest.param("float16", marks=pytest.mark.skipif(
        not _fp16_autocast_on_cpu(), reason="this CPU build has no float16 autocast"))]


@pytest.mark.parametrize("dtype", _precisions())
def test_reduced_precision_inference_agrees_with_float32_on_a_synthetic_street(dtype):
    from ams_ros.core.sources.synthetic import SyntheticWorld

    frame, _ = SyntheticWorld(seed=0, width=512, height=256).frame_at(3.0)
    torch.manual_seed(0)
    model = build_student("deeplabv3_mobilenet_v2", num_classes=8).eval()
    ref = predict(model, [frame])[0]
    low = predict(model, [frame], dtype=dtype)[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: the weights are untouched
    assert float(np.mean(ref == low)) >= AGREEMENT[dtype]


@pytest.mark.parametrize("dtype", _precisions())
def test_reduced_precision_inference_agrees_with_float32_on_a_real_frame(dtype):
    import cv2

    from ams_ros.core.common.assets import asset_path
    from ams_ros.core.models.weights import load_student

    tfl = asset_path("models/student/deeplabv3_mnv2_pascal_quant.tflite")
    img = asset_path("images/cityscapes/frankfurt_000001_058914_leftImg8bit.png")
    if tfl is None or img is None:
        pytest.skip("shared assets absent")
    model = load_student("deeplabv3_mobilenet_v2", 21, weights=f"tflite:{tfl}").eval()
    frame = cv2.cvtColor(cv2.imread(str(img)), cv2.COLOR_BGR2RGB)
    ref, low = predict(model, [frame])[0], predict(model, [frame], dtype=dtype)[0]
    assert float(np.mean(ref == low)) >= AGREEMENT[dtype]


def test_edge_inference_matches_predict_colorize_and_overlay():
    from ams_ros.core.edge.inference import EdgeInference
    from ams_ros.core.models.labels import colorize, get_label_space, overlay

    space = get_label_space("synthetic")
    torch.manual_seed(0)
    model = build_student("deeplabv3_mobilenet_v2", num_classes=space.num_classes).eval()
    rng = np.random.default_rng(0)
    for shape in ((128, 256, 3), (100, 300, 3)):  # at the input size, and resized there and back
        frame = rng.integers(0, 256, size=shape, dtype=np.uint8)
        inf = EdgeInference(space, (256, 128), "cpu")
        labels, mask, blended = inf.run(model, frame, mask=True, overlay=True, alpha=0.3)
        np.testing.assert_array_equal(labels, predict(model, [frame], size=(256, 128))[0])
        np.testing.assert_array_equal(mask, colorize(labels, space))
        diff = np.abs(blended.astype(int) - overlay(frame, mask, 0.3).astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01  # float32 rounding of the blend
        only_labels = inf.run(model, frame)
        assert only_labels[1] is None and only_labels[2] is None  # nothing computed that was not asked for
        np.testing.assert_array_equal(only_labels[0], labels)
