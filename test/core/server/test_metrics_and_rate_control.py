"""mIoU (confusion matrix, zero-union exclusion, ignore), bandwidth, phi-score, Eq. (1), ATP."""

import numpy as np
import pytest

from ams_ros.core.common.metrics import BandwidthMeter, ConfusionMatrix, WindowedMIoU, miou
from ams_ros.core.server.rate_control import AdaptiveTrainingPeriod, SamplingRateController, phi_iou, phi_loss


def test_miou_by_hand():
    ref = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 0]], np.uint8)
    cm = ConfusionMatrix(4).update(pred, ref)
    iou = cm.iou_per_class()
    # class 0: tp 3, fn 1, fp 0 -> 3/4; class 1: tp 2, fn 1, fp 1 -> 2/4; class 2: tp 0 fp 1 -> 0; class 3 absent
    assert iou[0] == pytest.approx(0.75) and iou[1] == pytest.approx(0.5) and iou[2] == 0.0
    assert np.isnan(iou[3])
    assert cm.miou() == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
    assert miou(ref, ref, 4) == 1.0
    assert np.isnan(ConfusionMatrix(3).miou())


def test_predictions_outside_classes_count_as_wrong():
    ref = np.zeros((2, 2), np.uint8)
    pred = np.full((2, 2), 255, np.uint8)
    assert miou(pred, ref, 3) == 0.0


def test_windowed_miou_forgets_old_frames():
    w = WindowedMIoU(2, window_s=10.0)
    good = np.zeros((4, 4), np.uint8)
    w.add(0.0, 1 - good, good)  # all wrong
    w.add(12.0, good, good)     # all right
    assert w.value(5.0) == 0.0
    assert w.value(15.0) == 1.0


def test_bandwidth_meter():
    b = BandwidthMeter()
    for t in range(10):
        b.add(t, 1250)  # 10 kbit per second
    assert b.kbps(0, 10) == pytest.approx(10.0)
    assert b.total_bytes == 12500
    t, k = b.series(5.0, 10.0)
    assert list(k) == [pytest.approx(10.0), pytest.approx(10.0)]


def test_phi_forms():
    a = np.zeros((10, 10), np.uint8)
    b = a.copy()
    b[:2] = 1
    assert phi_loss(a, a) == 0.0 and phi_loss(a, b) == pytest.approx(0.2)
    assert phi_iou(a, a, 2) == 1.0 and phi_iou(a, b, 2) < 1.0
    c = b.copy()
    c[:] = 255
    assert np.isnan(phi_loss(a, c))


def _feed(ctrl, labels, t0=0.0):
    rates = []
    for i, lab in enumerate(labels):
        t = t0 + i
        ctrl.add_label(t, lab)
        r = ctrl.maybe_update(t)
        if r is not None:
            rates.append(r)
    return rates


def moving(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 5, (16, 16)).astype(np.uint8) for _ in range(n)]


def test_eq1_numerics_and_clipping():
    c = SamplingRateController(r_min=0.1, r_max=1.0, r_init=0.5, eta_r=2.0, phi_target=0.1)
    assert c.step(0.2) == pytest.approx(0.7)
    assert c.step(1.0) == 1.0
    assert c.step(-5.0) == 0.1


@pytest.mark.parametrize("form", ["loss", "iou"])
def test_rate_falls_on_static_scene_and_rises_on_changing_one(form):
    c = SamplingRateController(form=form, period_s=10.0)
    static = [np.zeros((16, 16), np.uint8)] * 60
    rates = _feed(c, static)
    assert rates[-1] == pytest.approx(0.1)
    rates = _feed(c, moving(80), t0=60.0)
    assert rates[-1] == pytest.approx(1.0)


def test_adaptive_training_period_triggers_and_returns():
    c = SamplingRateController(period_s=10.0)
    atp = AdaptiveTrainingPeriod(base_period_s=10.0)
    periods = []
    for i, lab in enumerate([np.zeros((8, 8), np.uint8)] * 400):
        c.add_label(float(i), lab)
        r = c.maybe_update(float(i))
        if r is not None:
            periods.append(atp.observe_rate(r))
    assert max(periods) == 60.0  # lengthened up to 6x on the static scene
    for i, lab in enumerate(moving(80), start=400):
        c.add_label(float(i), lab)
        r = c.maybe_update(float(i))
        if r is not None:
            periods.append(atp.observe_rate(r))
    assert periods[-1] == 10.0
