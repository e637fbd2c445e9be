"""Teachers: spec parsing, restriction wrapper, checkpoint teacher and the real TFLite teacher."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ams_ros.core import sources as _sources  # noqa: F401 (registers the oracle teacher)
from ams_ros.core.models.labels import CITYSCAPES, get_label_space, labels_from_colors
from ams_ros.core.models import teachers as T
from ams_ros.core.models.student import build_student
from ams_ros.core.models.weights import save_student_checkpoint

TEACHER = "models/teacher/deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite"
CITY = "images/cityscapes/frankfurt_000001_058914"


class FixedTeacher:
    name = "fixed"
    label_space = CITYSCAPES

    def label(self, images):
        return [np.full(img.shape[:2], i % 19, dtype=np.uint8) for i, img in enumerate(images)]


def test_build_teacher_unknown_specs_list_forms():
    for spec in ("", "magic:foo", "tflite:", "resnet"):
        with pytest.raises(ValueError, match="accepted") as err:
            T.build_teacher(spec)
        for form in ("tflite:PATH", "torchvision:NAME", "checkpoint:PATH", "oracle"):
            assert form in str(err.value)


def test_build_teacher_missing_files():
    with pytest.raises(FileNotFoundError):
        T.build_teacher("tflite:/nonexistent/model.tflite")
    with pytest.raises(FileNotFoundError):
        T.build_teacher("checkpoint:/nonexistent/ckpt.pt")
    with pytest.raises(ValueError, match="deeplabv3_resnet50"):
        T.build_teacher("torchvision:vgg_seg")


def test_register_teacher_factory():
    seen = {}

    def factory(arg, space):
        seen["arg"], seen["space"] = arg, space
        return FixedTeacher()

    T.register_teacher_factory("fixedtest", factory)
    try:
        t = T.build_teacher("fixedtest:0.5", label_space="cityscapes")
        assert isinstance(t, T.Teacher) and seen == {"arg": "0.5", "space": CITYSCAPES}
        assert any(s.startswith("fixedtest") for s in T.accepted_teacher_specs())
    finally:
        T.TEACHER_FACTORIES.pop("fixedtest")


def test_selected_classes_teacher():
    t = T.SelectedClassesTeacher(FixedTeacher(), ["sidewalk", "road"])
    assert t.label_space.class_names == ("sidewalk", "road")
    a, b, c = t.label([np.zeros((4, 5, 3), np.uint8)] * 3)
    assert a.shape == (4, 5) and np.all(a == 1) and np.all(b == 0) and np.all(c == 255)


def test_checkpoint_teacher(tmp_path):
    torch.manual_seed(0)
    space = get_label_space("cityscapes[road,car,sky]")
    save_student_checkpoint(build_student("deeplabv3_mobilenet_v2", 3), tmp_path / "t.pt",
                            "deeplabv3_mobilenet_v2", 3, space, input_size=(128, 64))
    t = T.build_teacher(f"checkpoint:{tmp_path / 't.pt'}")
    assert t.label_space == space and t.input_size == (128, 64)
    out = t.label([np.zeros((30, 40, 3), np.uint8), np.full((64, 128, 3), 200, np.uint8)])
    assert [o.shape for o in out] == [(30, 40), (64, 128)] and all(o.max() < 3 for o in out)
    with pytest.raises(ValueError, match="19"):
        T.CheckpointTeacher(tmp_path / "t.pt", label_space="cityscapes")


def test_torchvision_teacher_offline(monkeypatch, tmp_path):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="can't be downloaded here"):
        T.build_teacher("torchvision:lraspp_mobilenet_v3_large")


def test_tflite_teacher_agrees_with_cityscapes_ground_truth(assets):
    img = cv2.cvtColor(cv2.imread(str(assets / f"{CITY}_leftImg8bit.png")), cv2.COLOR_BGR2RGB)
    gt_rgb = cv2.cvtColor(cv2.imread(str(assets / f"{CITY}_gtFine_color.png")), cv2.COLOR_BGR2RGB)
    gt = labels_from_colors(gt_rgb, CITYSCAPES)
    teacher = T.build_teacher(f"tflite:{assets / TEACHER}")
    assert teacher.label_space is CITYSCAPES
    (lab,) = teacher.label([img])
    assert lab.shape == img.shape[:2] and lab.dtype == np.uint8
    valid = gt != 255
    accuracy = float((lab == gt)[valid].mean())
    print(f"TFLite teacher pixel accuracy on {CITY}: {accuracy:.4f}")
    assert valid.mean() > 0.5 and accuracy >= 0.85
    sel = T.SelectedClassesTeacher(teacher, ["road", "car"])
    (small,) = sel.label([img[::4, ::4].copy()])
    assert set(np.unique(small)) <= {0, 1, 255} and (small == 0).mean() > 0.2


# ------------------------------------------------------------------------------------------
# torchvision teachers from a local weights file, on a device, one batched call (issue #14)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_torchvision_teacher_loads_a_local_state_dict_by_spec_and_maps_voc_classes(tmp_path, name):
    import torchvision.models.segmentation as seg

    torch.manual_seed(0)
    net = getattr(seg, name)(weights=None, weights_backbone=None, num_classes=21, aux_loss=None)
    path = tmp_path / f"{name}.pth"
    torch.save(net.state_dict(), path)
    teacher = T.build_teacher(f"torchvision:{name}@{path}")
    assert teacher.name == f"torchvision:{name}" and teacher.label_space.name == "voc"
    for a, b in zip(teacher.model.net.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)  # the file's weights, not a fresh initialisation
    teacher.input_size = (64, 64)  # small enough for a test
    assert T.place_teacher(teacher, torch.device("cpu")) == "cpu"
    frames = [np.random.default_rng(i).integers(0, 256, (40, 60, 3), dtype=np.uint8) for i in range(3)]
    calls = []
    forward = teacher.model.forward
    teacher.model.forward = lambda x: (calls.append(x.shape[0]), forward(x))[1]
    labels = teacher.label(frames)
    assert calls == [3]  # the whole batch in one forward pass
    assert all(lab.shape == (40, 60) and lab.dtype == np.uint8 and lab.max() < 21 for lab in labels)
    picked = T.select_classes(teacher, ["person", "car"])  # VOC ids 15 and 7 -> 0 and 1, the rest ignore
    for full, sub in zip(labels, picked.label(frames)):
        np.testing.assert_array_equal(sub, np.where(full == 15, 0, np.where(full == 7, 1, 255)))


def test_cpu_only_teachers_refuse_an_explicit_cuda_device_and_stay_on_the_cpu_for_auto():
    oracle = T.build_teacher("oracle:0")
    with pytest.raises(ValueError, match="runs on the CPU only"):
        T.place_teacher(oracle, torch.device("cuda:0"), explicit=True)
    assert "not a PyTorch model" in T.place_teacher(oracle, torch.device("cuda:0"), explicit=False)
    assert T.place_teacher(oracle, torch.device("cpu")) == "cpu"


# ------------------------------------------------------------------------------------------
# labels worth learning from (issue #29): doubtful teacher pixels are ignore
# ------------------------------------------------------------------------------------------


def test_confident_class_map_ignores_non_finite_and_unsure_pixels():
    from ams_ros.core.models.student import confident_class_map

    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 1, 0, 0] = 10.0            # sure of class 1
    logits[0, 2, 0, 1] = 0.5             # class 2, top probability about 0.45
    logits[0, :, 0, 2] = float("nan")    # the teacher's scores are not finite here
    logits[0, 0, 0, 3] = float("inf")
    assert confident_class_map(logits, 0.0).tolist() == [[[1, 2, 255, 255]]]
    assert confident_class_map(logits, 0.6).tolist() == [[[1, 255, 255, 255]]]


class _Fixed(torch.nn.Module):
    """Logits fixed per column: sure of class 1 on the left half, unsure on the right."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], 3, *x.shape[-2:]) + self.w
        half = x.shape[-1] // 2
        out[:, 1, :, :half] = 8.0
        out[:, 2, :, half:] = 0.3
        return out


def test_a_pytorch_teacher_with_min_confidence_labels_unsure_pixels_ignore_and_says_so_in_its_name():
    teacher = T._TorchTeacher()
    teacher.model, teacher.input_size, teacher.label_space, teacher.name = _Fixed(), (8, 4), get_label_space("synthetic"), "fixed"
    frame = np.zeros((4, 8, 3), np.uint8)
    assert (teacher.label([frame])[0] != 255).all()  # 0 = every pixel
    assert T.place_teacher(teacher, torch.device("cpu"), min_confidence=0.5) == "cpu"
    lab = teacher.label([frame])[0]
    assert (lab[:, :4] == 1).all() and (lab[:, 4:] == 255).all()
    assert teacher.name == "fixed|min_confidence=0.5"  # its labels differ: cached apart from the plain teacher's


def test_a_teacher_without_scores_refuses_a_min_confidence_and_names_the_fix():
    with pytest.raises(ValueError, match="gives labels without scores, so teacher_min_confidence 0.5 cannot be applied: "
                                         "set it to 0, or use a PyTorch teacher"):
        T.place_teacher(T.build_teacher("oracle:0"), torch.device("cpu"), min_confidence=0.5)
