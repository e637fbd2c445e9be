"""The dequantised TFLite student must compute what the TFLite model computes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ams_ros.core.models.weights import load_student
from ams_ros.core.models.tflite_import import TFLiteSegmenter, dequantize, import_tflite_student, run_tflite_segmenter
from ams_ros.core.models.params import num_params

STUDENT = "models/student/deeplabv3_mnv2_pascal_quant.tflite"
IMAGES = ("images/cityscapes/frankfurt_000001_058914_leftImg8bit.png",
          "video/camvid-0016E5/frames/000390.jpg", "video/camvid-0016E5/frames/000420.jpg")


def test_dequantize_per_tensor_and_per_channel():
    q = np.array([[0, 10], [20, 30]], dtype=np.uint8)
    per_tensor = {"quantization_parameters": {"scales": np.array([0.5]), "zero_points": np.array([10]),
                                              "quantized_dimension": 0}}
    assert np.allclose(dequantize(per_tensor, q), [[-5, 0], [5, 10]])
    per_channel = {"quantization_parameters": {"scales": np.array([1.0, 2.0]), "zero_points": np.array([0, 0]),
                                               "quantized_dimension": 1}}
    assert np.allclose(dequantize(per_channel, q.astype(np.int8)), [[0, 20], [20, 60]])
    assert dequantize({}, np.ones(3, np.float32)).dtype == np.float32


@pytest.fixture(scope="module")
def imported():
    from ams_ros.core.common.assets import asset_path

    path = asset_path(STUDENT)
    if path is None:
        pytest.skip("shared assets not found")
    return path, import_tflite_student(path)


def test_torch_argmax_agrees_with_tflite(assets, imported):
    path, model = imported
    assert model.num_classes == 21 and 2_050_000 <= num_params(model) <= 2_150_000
    seg = TFLiteSegmenter(path)
    assert seg.input_size == (513, 513)
    for rel in IMAGES:
        img = cv2.cvtColor(cv2.imread(str(assets / rel)), cv2.COLOR_BGR2RGB)
        x = cv2.resize(img, (513, 513), interpolation=cv2.INTER_LINEAR)
        ref = seg.run_raw(x)
        with torch.no_grad():
            ours = model(torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255.0).argmax(1)[0].numpy()
        agree = float((ours == ref).mean())
        objects = ref != 0  # background dominates; the objects are where a wrong import shows
        agree_obj = float((ours == ref)[objects].mean())
        print(f"{rel}: agreement {agree:.4f}, on non-background pixels {agree_obj:.4f} ({objects.sum()} px)")
        assert objects.sum() > 1000
        assert agree >= 0.95 and agree_obj >= 0.95


def test_load_student_from_tflite_with_fewer_classes(assets, imported):
    path, full = imported
    model = load_student("deeplabv3_mobilenet_v2", num_classes=7, weights=f"tflite:{path}")
    s, f = model.state_dict(), full.state_dict()
    assert s["classifier.weight"].shape == (7, 256, 1, 1)
    assert all(torch.equal(s[k], f[k]) for k in s if not k.startswith("classifier."))
    with pytest.raises(ValueError, match="deeplabv3_mobilenet_v2"):
        load_student("lraspp_mobilenet_v3_large", 7, weights=f"tflite:{path}")


def test_run_tflite_segmenter_returns_image_size(assets):
    img = cv2.cvtColor(cv2.imread(str(assets / IMAGES[1])), cv2.COLOR_BGR2RGB)
    lab = run_tflite_segmenter(assets / STUDENT, img)
    assert lab.shape == img.shape[:2] and lab.dtype == np.uint8 and lab.max() < 21
