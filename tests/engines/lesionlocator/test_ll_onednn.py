"""The opt-in CPU forward with oneDNN-layout Conv3d weights (issue 11 item 4) gives the plain forward's masks.

``EngineSettings.extra["onednn_weights"] = True`` switches it on (off by default: not measurably
faster on the machine we measured, ``benchmarks/lesionlocator_forward.py``); these tests compare it with
the plain torch forward: single layers against ``F.conv3d`` (strides, padding, groups, bias or not),
the weight cache after a fold swap, the fallbacks, and whole engine runs on the tiny generated
checkpoint (point and box prompts, two folds, TTA, tracking).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

import _ll_helpers as H  # noqa: E402

from napari_lesionlocator.core.geometry import Geometry  # noqa: E402
from napari_lesionlocator.core.image import Image  # noqa: E402
from napari_lesionlocator.core.prompts import BoxPrompt, PointPrompt  # noqa: E402
from napari_lesionlocator.engines.base import EngineSettings, create_engine  # noqa: E402
from napari_lesionlocator.engines.lesionlocator import onednn  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN CPU convolutions"),
]


from _ll_helpers import one_torch_thread  # noqa: E402,F401 - autouse: one torch thread per test


@pytest.mark.parametrize(
    "kw",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "padding": 1, "stride": 2},
        {"kernel_size": (1, 3, 3), "padding": (0, 1, 1), "stride": (1, 2, 2), "bias": False},
        {"kernel_size": 1},
        {"kernel_size": 3, "padding": 2, "dilation": 2, "groups": 2},
    ],
)
def test_layer_equals_plain_conv_and_follows_weight_changes(kw):
    rng = np.random.default_rng(sum(map(ord, repr(kw))))
    conv = torch.nn.Conv3d(4, 6, **kw).eval()
    x = torch.from_numpy(rng.normal(size=(1, 4, 9, 13, 11)).astype(np.float32))
    with torch.inference_mode():
        plain = conv(x)
    assert onednn.use_onednn_weights(conv) == 1
    assert onednn.use_onednn_weights(conv) == 0  # patching twice is a no-op
    with torch.inference_mode():
        fast = conv(x)
    assert fast.shape == plain.shape and not fast.is_mkldnn
    assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-5)
    assert conv._ll_weight is not None and conv._ll_weight.is_mkldnn  # the fast call really ran
    # a fold swap: new weights through load_state_dict must be used, not the cached reorder
    new = {k: torch.from_numpy(rng.normal(size=v.shape).astype(np.float32)) for k, v in conv.state_dict().items()}
    conv.load_state_dict(new)
    with torch.inference_mode():
        fast2 = conv(x)
    ref2 = torch.nn.functional.conv3d(
        x, new["weight"], new.get("bias"), conv.stride, conv.padding, conv.dilation, conv.groups
    )
    assert torch.allclose(fast2, ref2, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(fast2, fast, atol=1e-3)
    # keys unchanged; restore gives the plain forward back
    assert set(conv.state_dict()) == set(new)
    assert onednn.restore(conv) == 1 and not onednn.is_patched(conv)


def test_fallbacks_take_the_plain_forward():
    conv = torch.nn.Conv3d(2, 3, 3, padding=1)
    onednn.use_onednn_weights(conv)
    x = torch.randn(1, 2, 6, 6, 6, requires_grad=True)
    y = conv(x)  # gradients: the plain forward, so backward works
    y.sum().backward()
    assert x.grad is not None and conv._ll_weight is None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x.detach()).dtype == torch.bfloat16  # autocast: plain forward, autocast's dtype
    assert conv._ll_weight is None
    same = torch.nn.Conv3d(2, 3, 3, padding="same")
    circ = torch.nn.Conv3d(2, 3, 3, padding=1, padding_mode="circular")
    assert onednn.use_onednn_weights(same) == 0 and onednn.use_onednn_weights(circ) == 0


@pytest.fixture(scope="module")
def image():
    arr = H.ct_volume((22, 70, 64), seed=5)
    return Image(arr, Geometry(arr.shape, spacing=(1.8, 0.8, 0.75), origin=(3.0, -20.0, 7.5)), name="case")


def _engine(onednn_weights: bool, **kw):
    extra = {"onednn_weights": onednn_weights}
    settings = EngineSettings(checkpoint=str(H.tiny_checkpoint()), extra=extra, **kw)
    return create_engine("lesionlocator", settings)


@pytest.mark.parametrize("tta", [False, True])
def test_engine_masks_equal_the_plain_forward(image, tta):
    prompts = [PointPrompt(1, (11, 30, 28)), BoxPrompt(2, (4, 18, 40, 66, 10, 40)), PointPrompt(3, (2, 5, 60))]
    fast_eng, plain_eng = _engine(True, folds=[0, 1], tta=tta), _engine(False, folds=[0, 1], tta=tta)
    fast, plain = fast_eng.segment(image, prompts), plain_eng.segment(image, prompts)
    assert onednn.is_patched(fast_eng.model("point").network) and onednn.is_patched(fast_eng.model("box").network)
    assert not onednn.is_patched(plain_eng.model("point").network)
    default = create_engine("lesionlocator", EngineSettings(checkpoint=str(H.tiny_checkpoint()), folds=[0]))
    assert not onednn.is_patched(default.model("point").network)  # off unless asked for
    assert any("oneDNN" in m for m in fast_eng.messages)
    used = [m for m in fast_eng.model("point").network.modules() if getattr(m, "_ll_weight", None) is not None]
    assert used, "the fast convolution never ran"
    total = 0
    for lid in (1, 2, 3):
        a, b = fast.lesions[lid].mask.to_full(), plain.lesions[lid].mask.to_full()
        total += int(b.sum())
        assert np.array_equal(a, b), f"lesion {lid}: {int((a != b).sum())} voxel(s) differ"
    assert total > 0, "the test needs non-empty masks"


def test_tracking_masks_equal_the_plain_forward():
    pytest.importorskip("unigradicon")
    base, fu1, _ = H.timepoints()
    engines = {}
    for flag in (True, False):
        settings = EngineSettings(checkpoint=str(H.tiny_full_checkpoint()), folds=[0], extra={"onednn_weights": flag})
        engines[flag] = create_engine("lesionlocator", settings)
    seg = engines[False].segment(base, [PointPrompt(1, (12, 24, 24))])
    own = {lid: r.mask for lid, r in seg.lesions.items()}
    fast, plain = engines[True].track(base, own, fu1), engines[False].track(base, own, fu1)
    net = engines[True].model("track").network
    assert onednn.is_patched(net.unet) and not onednn.is_patched(net.reg_net)  # the registration is left alone
    assert any(getattr(m, "_ll_weight", None) is not None for m in net.unet.modules())
    a, b = fast.lesions[1].mask.to_full(), plain.lesions[1].mask.to_full()
    assert b.any() and np.array_equal(a, b)
    assert fast.lesions[1].status == plain.lesions[1].status
