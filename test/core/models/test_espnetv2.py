"""ESPNetv2 Cityscapes teacher: architecture, spec parsing, batching, and the real zoo weights.

The asset tests load the EdgeNets state dict strictly and check the network's behaviour on real
frames (a wrong op order, pooling or normalisation loads fine but labels badly).
"""

from __future__ import annotations

import glob
import os

import cv2
import numpy as np
import pytest
import torch

from ams_ros.core.models.labels import (CAMVID_VOID, CITYSCAPES, camvid_to_cityscapes, cityscapes_to_camvid,
                                 labels_from_colors)
from ams_ros.core.common.metrics import ConfusionMatrix
from ams_ros.core.models import espnetv2 as E
from ams_ros.core.models import teachers as T

WEIGHTS = "models/teacher/espnetv2_s_2.0_city_1024x512.pth"
CITY = "images/cityscapes/frankfurt_000001_058914"
CAMVID = "video/camvid-0016E5"


def _rgb(path: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def _constant_weights(tmp_path, winner: int) -> str:
    """A randomly initialised net whose last 1x1 conv always makes ``winner`` the argmax."""
    torch.manual_seed(0)
    model = E.ESPNetv2Segmentation()
    last = model.bu_dec_l4.merge_layer[3]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[winner] = 10.0
    path = tmp_path / f"const{winner}.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def test_branch_dilations_follow_the_receptive_field_limits():
    assert E.branch_dilations(4, 13) == [1, 2, 3, 4]
    assert E.branch_dilations(4, 9) == [1, 2, 3, 4]
    assert E.branch_dilations(4, 7) == [1, 1, 2, 3]  # kernel 9 exceeds 7: falls back to 3x3, sorted first
    assert E.branch_dilations(4, 5) == [1, 1, 1, 2]


def test_network_returns_20_logits_at_the_input_size_and_rejects_sizes_not_multiple_of_32():
    model = E.ESPNetv2Segmentation().eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 96))
    assert out.shape == (2, E.NUM_OUTPUTS, 64, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 64, 80))


def test_background_output_becomes_ignore_and_labels_come_back_at_each_frame_size(tmp_path):
    t = E.ESPNetv2Teacher(_constant_weights(tmp_path, E.BACKGROUND_INDEX), input_size=(64, 64))
    assert t.label_space is CITYSCAPES
    a, b = t.label([np.zeros((30, 40, 3), np.uint8), np.full((70, 50, 3), 99, np.uint8)])
    assert a.shape == (30, 40) and b.shape == (70, 50) and a.dtype == np.uint8
    assert np.all(a == 255) and np.all(b == 255)
    car = E.ESPNetv2Teacher(_constant_weights(tmp_path, CITYSCAPES.index("car")), input_size=(64, 32))
    (c,) = car.label([np.zeros((10, 20, 3), np.uint8)])
    assert np.all(c == CITYSCAPES.index("car"))


def test_a_list_of_frames_is_labelled_in_one_batched_forward_unless_max_batch_splits_it(tmp_path):
    t = E.ESPNetv2Teacher(_constant_weights(tmp_path, 0), input_size=(100, 60))
    assert t.input_size == (96, 64)  # rounded to multiples of 32
    calls = []
    t.model.register_forward_hook(lambda mod, inp, out: calls.append(tuple(inp[0].shape)))
    frames = [np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
              for i, (h, w) in enumerate([(48, 64), (64, 96), (33, 17)])]
    out = t.label(frames)
    assert calls == [(3, 3, 64, 96)]
    assert [o.shape for o in out] == [(48, 64), (64, 96), (33, 17)]
    calls.clear()
    t.max_batch = 2
    again = t.label(frames)
    assert calls == [(2, 3, 64, 96), (1, 3, 64, 96)]
    assert all(np.array_equal(a, b) for a, b in zip(out, again))


def test_spec_forms_device_suffix_and_errors(tmp_path):
    path = _constant_weights(tmp_path, 1)
    t = T.build_teacher(f"espnetv2:{path}@cpu")
    assert isinstance(t, E.ESPNetv2Teacher) and t.label_space is CITYSCAPES and t.input_size == (1024, 512)
    assert t.device == torch.device("cpu") and next(t.model.parameters()).device.type == "cpu"
    assert "espnetv2:PATH[@DEVICE]" in T.accepted_teacher_specs()
    with pytest.raises(ValueError, match="espnetv2:PATH"):
        T.build_teacher("espnetv2:")
    with pytest.raises(FileNotFoundError, match="espnetv2_s_2.0_city"):
        T.build_teacher("espnetv2:/nonexistent/espnet.pth")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:0'.*no CUDA device"):
            T.build_teacher(f"espnetv2:{path}@cuda:0")
    with pytest.raises(ValueError, match="19 Cityscapes classes"):
        T.build_teacher(f"espnetv2:{path}", label_space="camvid")


def test_a_state_dict_with_a_missing_or_misshapen_tensor_is_rejected(tmp_path):
    state = E.ESPNetv2Segmentation().state_dict()
    state.pop("bu_br_l4.1.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="bu_br_l4.1.weight"):
        E.load_espnetv2(tmp_path / "bad.pth")


def test_zoo_weights_load_strictly_with_every_name_and_shape(assets):
    path = assets / WEIGHTS
    if not path.exists():
        pytest.skip(f"{WEIGHTS} not in the shared assets")
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    model_state = E.ESPNetv2Segmentation().state_dict()
    assert {k: tuple(v.shape) for k, v in file_state.items()} == {k: tuple(v.shape) for k, v in model_state.items()}
    model = E.load_espnetv2(path)
    assert torch.equal(model.bu_dec_l4.merge_layer[3].bias, file_state["bu_dec_l4.merge_layer.3.bias"])


def test_zoo_teacher_labels_the_cityscapes_frame_like_its_fine_annotation(assets):
    if not (assets / WEIGHTS).exists():
        pytest.skip(f"{WEIGHTS} not in the shared assets")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    img = _rgb(str(assets / f"{CITY}_leftImg8bit.png"))
    gt = labels_from_colors(_rgb(str(assets / f"{CITY}_gtFine_color.png")), CITYSCAPES)
    teacher = T.build_teacher(f"espnetv2:{assets / WEIGHTS}")
    (lab,) = teacher.label([img])
    assert lab.shape == img.shape[:2] and lab.dtype == np.uint8
    cm = ConfusionMatrix(19).update(lab, gt)
    print(f"ESPNetv2 on {CITY}: pixel accuracy {cm.pixel_accuracy():.4f}, mIoU {cm.miou():.4f}")
    # measured 0.948 / 0.450, car IoU 0.60 (the TFLite teacher: 0.927). Variants that still load
    # strictly score less: no ImageNet normalisation 0.869, pyramid without its scales 0.908,
    # EESP dilations without the receptive-field cap 0.939 with car IoU 0.38.
    assert cm.pixel_accuracy() >= 0.94
    for name in ("road", "building", "sky", "car", "vegetation"):
        assert cm.iou_per_class()[CITYSCAPES.index(name)] >= 0.5, name


def test_zoo_teacher_gives_cityscapes_labels_on_a_camvid_frame(assets):
    if not (assets / WEIGHTS).exists():
        pytest.skip(f"{WEIGHTS} not in the shared assets")
    frames = sorted(glob.glob(str(assets / CAMVID / "frames" / "*.jpg")))
    if not frames:
        pytest.skip(f"{CAMVID} frames not in the shared assets")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    img = _rgb(frames[0])
    gt = cv2.imread(str(assets / CAMVID / "labels" / (os.path.basename(frames[0])[:-4] + ".png")), cv2.IMREAD_UNCHANGED)
    gt = np.where(gt == CAMVID_VOID, 255, gt).astype(np.uint8)
    teacher = T.build_teacher(f"espnetv2:{assets / WEIGHTS}")
    (lab,) = teacher.label([img])
    assert lab.shape == img.shape[:2]
    assert set(np.unique(lab).tolist()) <= set(range(19)) | {255}
    acc11 = ConfusionMatrix(11).update(cityscapes_to_camvid(lab), gt).pixel_accuracy()
    acc19 = ConfusionMatrix(19).update(lab, camvid_to_cityscapes(gt)).pixel_accuracy()
    print(f"ESPNetv2 on {os.path.basename(frames[0])}: CamVid-11 accuracy {acc11:.4f}, Cityscapes-space {acc19:.4f}")
    # measured on 000390: 0.812 / 0.809; 31 frames of 0016E5 average 0.912 (TFLite teacher: 0.891)
    assert acc11 >= 0.75 and acc19 >= 0.75
