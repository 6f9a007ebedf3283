"Heavier checks of fundus_ssl.segmentation: sliding windows, U-Net shapes, losses, a short training, real DRIVE."
import math, re, time

import numpy as np
import pytest, torch
import torch.nn.functional as F
from torch import nn
from fastai.callback.schedule import combined_cos

from fundus_ssl.core import fundus_data_root
from fundus_ssl.data import IMAGENET_STATS, segmentation_dls
from fundus_ssl.datasets import read_drive
from fundus_ssl.io import read_mask
from fundus_ssl.models import create_encoder, export_encoder
from fundus_ssl.segmentation import (DiceBCELoss, DiceCELoss, StepClock, TimeBudget, evaluate_segmentation, predict_segmentation,
                                     resolve_clock, segmentation_learner, sliding_window, soft_dice_loss, unet_model, window_starts,
                                     window_weights)
from fundus_ssl.synthetic import write_drive_like

torch.set_num_threads(1)


def copy_channel(c: int, n_in: int = 3) -> nn.Conv2d:
    "A 1x1 convolution whose output is input channel `c`: an identity-like segmentation model."
    conv = nn.Conv2d(n_in, 1, 1, bias=False)
    with torch.no_grad(): conv.weight.copy_(F.one_hot(torch.tensor(c), n_in).float().view(1, n_in, 1, 1))
    return conv


# --- sliding windows -----------------------------------------------------------------------------

@pytest.mark.parametrize('size', [(97, 131), (31, 45), (256, 256), (300, 70), (1, 1)])
@pytest.mark.parametrize('window,overlap,mode', [(64, 0.5, 'gaussian'), (48, 0.25, 'linear'), ((40, 72), 0.6, 'constant'),
                                                  (32, 0.0, 'gaussian'), (64, 0.9, 'linear')])
def test_sliding_window_reproduces_identity(size, window, overlap, mode):
    x = torch.rand(2, 3, *size)
    out = sliding_window(copy_channel(2), x, window, overlap, mode, batch_size=5)
    assert out.shape == (2, 1, *size)
    torch.testing.assert_close(out, x[:, 2:3], atol=1e-5, rtol=1e-5)


def test_sliding_window_pads_small_images_with_reflection():
    x = torch.rand(1, 3, 20, 24)
    torch.testing.assert_close(sliding_window(copy_channel(0), x, 32, pad_mode='reflect'), x[:, :1], atol=1e-6, rtol=0)


def test_sliding_window_batches_do_not_change_the_result():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    x = torch.rand(3, 3, 90, 77)
    a = sliding_window(model, x, 32, 0.5, batch_size=1)
    b = sliding_window(model, x, 32, 0.5, batch_size=64)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sliding_window_is_a_convex_blend_of_window_outputs():
    "Each window outputs its own constant; every pixel gets a weighted mean of the constants covering it."
    class Constant(nn.Module):
        def __init__(self): super().__init__(); self.calls = []
        def forward(self, x):
            k = torch.arange(len(self.calls), len(self.calls) + len(x), dtype=torch.float32)
            self.calls += list(k)
            return k.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:])
    m = Constant()
    out = sliding_window(m, torch.zeros(1, 1, 64, 96), 32, 0.5, 'gaussian', batch_size=4)
    starts_h, starts_w = window_starts(64, 32, 16), window_starts(96, 32, 16)
    assert len(m.calls) == len(starts_h) * len(starts_w)
    # pixel (0, 0) is covered by window 0 only; values stay between the smallest and largest window index
    assert out[0, 0, 0, 0] == 0
    assert out.min() >= -1e-5 and out.max() <= len(m.calls) - 1 + 1e-4
    # blending weights of all windows, normalised, sum to one everywhere
    w = window_weights(32, 'gaussian')
    total = torch.zeros(64, 96)
    for t in starts_h:
        for l in starts_w: total[t:t+32, l:l+32] += w
    norm = torch.zeros(64, 96)
    for t in starts_h:
        for l in starts_w: norm[t:t+32, l:l+32] += w / total[t:t+32, l:l+32]
    torch.testing.assert_close(norm, torch.ones(64, 96))


@pytest.mark.parametrize('size,window,overlap', [(565, 128, 0.5), (584, 256, 0.25), (100, 64, 0.4)])
def test_linear_ramps_are_a_partition_of_unity(size, window, overlap):
    stride = round(window * (1 - overlap))
    starts = window_starts(size, window, stride)
    if len(set(np.diff(starts))) != 1: pytest.skip('uneven spacing: ramps overlap by more than their length')
    ramp = window - (starts[1] - starts[0])  # `window_starts` spreads windows evenly: spacing <= stride
    assert ramp <= window // 2, 'two ramps meet in each overlap only when the ramp is at most half the window'
    w = window_weights(window, 'linear', ramp=ramp, floor=0)
    total = torch.zeros(size, size)
    for t in starts:
        for l in starts: total[t:t+window, l:l+window] += w
    inner = slice(ramp, size - ramp)
    torch.testing.assert_close(total[inner, inner], torch.ones(size - 2 * ramp, size - 2 * ramp))


def test_window_starts_cover_and_respect_stride():
    for size in range(1, 200, 7):
        for window in (8, 32, 64):
            for stride in (1, 5, window):
                s = window_starts(size, window, stride)
                assert s[0] == 0 and (s[-1] + window == size if size > window else s == [0])
                assert all(0 < d <= stride for d in np.diff(s))


# --- U-Net --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['resnet18', 'efficientnet_b0', 'convnext_atto'])
@pytest.mark.parametrize('size', [(65, 65), (97, 123), (128, 96)])
def test_unet_output_has_input_size(name, size):
    model = unet_model(name, n_classes=3, verbose=False).eval()
    with torch.no_grad(): assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)


def test_unet_loads_exported_ssl_encoder_and_reports(tmp_path, capsys):
    src = create_encoder('efficientnet_b0')
    with torch.no_grad(): src(torch.randn(4, 3, 64, 64))
    export_encoder(src, tmp_path/'eff.safetensors')
    model = unet_model(tmp_path/'eff.safetensors', depth=4)
    assert 'matched' in capsys.readouterr().out
    assert model.load_report.ok
    body = model[0]
    assert torch.equal(body.blocks_4[0].conv_pw.weight, src.model.blocks[4][0].conv_pw.weight)
    assert torch.equal(body.bn1.running_mean, src.model.bn1.running_mean)


def test_bad_encoder_and_sizes_named(tmp_path):
    "A misspelled timm name is not taken for a missing weight file; sizes and counts are checked before any work."
    with pytest.raises(ValueError, match=r"encoder='resnet_nope': not a timm model name"): unet_model('resnet_nope')
    with pytest.raises(FileNotFoundError, match='nope.safetensors not found'): unet_model(str(tmp_path/'nope.safetensors'))
    (tmp_path/'empty.safetensors').touch()
    with pytest.raises(ValueError, match=r'empty.safetensors: empty file \(0 bytes\)'): unet_model(tmp_path/'empty.safetensors')
    with pytest.raises(ValueError, match='in_chans=0: expected a positive int'): unet_model('resnet18', in_chans=0)
    x, model = torch.rand(1, 3, 16, 16), copy_channel(1)
    for kw, msg in [(dict(batch_size=0), 'batch_size=0'), (dict(batch_size=-2), 'batch_size=-2'), (dict(window=0), 'window=0'),
                    (dict(window=(16, 0)), 'window=0'), (dict(window=8.5), 'window=8.5')]:
        with pytest.raises(ValueError, match=re.escape(msg) + ': expected a positive int'): sliding_window(model, x, **kw)


# --- losses ------------------------------------------------------------------------------------------

def test_dice_bce_against_hand_computation():
    torch.manual_seed(0)
    logits, targ = torch.randn(2, 1, 5, 7), (torch.rand(2, 5, 7) > 0.6).long()
    p, t = torch.sigmoid(logits[:, 0]).double(), targ.double()
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    dice = (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    torch.testing.assert_close(DiceBCELoss()(logits, targ).double(), bce + 1 - dice, rtol=1e-5, atol=1e-6)
    dice_img = ((2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)).mean()
    torch.testing.assert_close(DiceBCELoss(per_image=True, xe_weight=0.5)(logits, targ).double(), 0.5 * bce + 1 - dice_img,
                               rtol=1e-5, atol=1e-6)


def test_dice_ce_against_hand_computation():
    torch.manual_seed(1)
    logits, targ = torch.randn(2, 3, 4, 6), torch.randint(0, 3, (2, 4, 6))
    p = logits.softmax(1).double()
    ce = -p.gather(1, targ[:, None]).log().mean()
    dices = []
    for c in (1, 2):
        pc, tc = p[:, c], (targ == c).double()
        dices.append((2 * (pc * tc).sum() + 1) / (pc.sum() + tc.sum() + 1))
    torch.testing.assert_close(DiceCELoss()(logits, targ).double(), ce + 1 - sum(dices) / 2, rtol=1e-5, atol=1e-6)
    assert float(soft_dice_loss(F.one_hot(targ, 3).permute(0, 3, 1, 2).float(), F.one_hot(targ, 3).permute(0, 3, 1, 2).float())) < 1e-6


# --- training on DRIVE-like data -------------------------------------------------------------------------

@pytest.fixture(scope='module')
def drive_like(tmp_path_factory):
    return read_drive(write_drive_like(tmp_path_factory.mktemp('seg')/'DRIVE', n_train=8, n_test=4, size=64))


def test_short_training_raises_dice(drive_like):
    torch.manual_seed(0)
    dls = segmentation_dls(drive_like, codes=['background', 'vessel'], size=None, patch_size=64, bs=4, valid_split='test')
    learn = segmentation_learner(dls, 'resnet18', depth=3, verbose=False)
    test = drive_like[drive_like.split == 'test']
    with learn.no_bar(), learn.no_logging():
        untrained = evaluate_segmentation(learn, test, window=48)[1]
        learn.fit_one_cycle(20, 3e-3)
        trained = evaluate_segmentation(learn, test, window=48)[1]
    assert trained.dice > untrained.dice + 0.15, (untrained.dice, trained.dice)
    assert trained.auc > max(0.75, untrained.auc + 0.1), (untrained.auc, trained.auc)
    assert learn.validate()[1] > 0.3


def test_time_budget_stops_training(drive_like):
    "A fake clock advancing 0.25 s per batch: the same 30 batches and the whole one-cycle schedule on any machine."
    dls = segmentation_dls(drive_like, codes=['background', 'vessel'], size=32, bs=4, valid_split='test')  # resized: fast
    learn = segmentation_learner(dls, 'resnet18', depth=2, verbose=False)
    clock = StepClock(0.25, start=1000.)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(10_000, 1e-3, cbs=TimeBudget(7.5, clock))
    assert learn.epoch < 9_999 and clock.readings == 31  # the start, then one reading per batch
    lrs = learn.recorder.lrs
    assert len(lrs) == 30
    one_cycle = combined_cos(0.25, 1e-3 / 25, 1e-3, 1e-3 / 1e5)
    np.testing.assert_allclose(lrs, [one_cycle(i / 30) for i in range(30)], rtol=1e-6)
    assert max(lrs) > 5 * lrs[0] and max(lrs) > 2 * lrs[-1]  # warm-up then annealing within the budget


def test_time_budget_clocks():
    assert resolve_clock('wall') is time.perf_counter and resolve_clock(len) is len
    for bad, msg in [(dict(seconds=0), 'seconds=0: expected a positive'), (dict(seconds=-1.), 'seconds=-1.0'),
                     (dict(seconds='60'), "seconds='60'"), (dict(seconds=1, clock='gpu'), "clock='gpu': expected 'wall' or 'cpu'")]:
        with pytest.raises(ValueError, match=msg): TimeBudget(**bad)


# --- real DRIVE ---------------------------------------------------------------------------------------

def test_predict_real_drive_at_native_resolution():
    root = fundus_data_root('DRIVE')
    if root is None: pytest.skip('FUNDUS_DATA/DRIVE not available')
    df = read_drive(root)
    row = df[df.split == 'test'].iloc[0]
    model = unet_model('resnet18', depth=2, verbose=False)
    prob = predict_segmentation(model, row['image'], window=256, overlap=0.25, stats=IMAGENET_STATS)
    assert prob.shape == read_mask(row['mask']).shape == (584, 565)
    assert 0 <= prob.min() and prob.max() <= 1
