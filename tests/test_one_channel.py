"1-channel images end to end on real DRIVE: MoCo v2 pretrains on the green channel, the encoder is exported and reloads in plain timm, a U-Net fine-tunes on it and is scored (skipped without FUNDUS_DATA)."
import math

import numpy as np
import pytest, timm, torch

from fundus_ssl.core import fundus_data_root
from fundus_ssl.data import IMAGENET_STATS, dls_channels, segmentation_dls
from fundus_ssl.datasets import read_drive
from fundus_ssl.io import read_image
from fundus_ssl.models import export_encoder, input_channels
from fundus_ssl.moco import moco_learner
from fundus_ssl.pretrain import unit_images, unlabeled_dls
from fundus_ssl.segmentation import evaluate_segmentation, predict_segmentation, segmentation_config, segmentation_learner

torch.set_num_threads(1)
GREEN_STATS = ([IMAGENET_STATS[0][1]], [IMAGENET_STATS[1][1]])  # ImageNet's green channel


@pytest.fixture(scope='module')
def drive():
    root = fundus_data_root('DRIVE')
    if root is None: pytest.skip('FUNDUS_DATA/DRIVE not available')
    df = read_drive(root)
    return df[df.split == 'train'].iloc[:8], df[df.split == 'test'].iloc[:2]


@pytest.fixture(scope='module')
def pretrained(drive, tmp_path_factory):
    "MoCo v2 on 64 px green-channel DRIVE for two steps; the learner, a batch of its images and the exported encoder file."
    train, _ = drive
    torch.manual_seed(0)
    dls = unlabeled_dls(train, size=64, bs=4, valid_pct=0.25, channels='green')   # 6 train images: one batch of 4 per epoch
    learn = moco_learner(dls, 'resnet18', queue_size=4, dim=32, bn_splits=2)
    before = learn.model.encoder.model.conv1.weight.detach().clone()
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3)
    learn.conv1_before = before
    path = tmp_path_factory.mktemp('export')/'moco_green.safetensors'
    report = export_encoder(learn.model.encoder, path)
    assert report.ok, report
    export_encoder(learn.model.encoder, path.parent/'folder')
    return learn, unit_images(dls.one_batch()[0], dls.train.after_batch), path


def test_moco_pretrains_on_green_channel(pretrained):
    learn, x, _ = pretrained
    assert dls_channels(learn.dls) == 'green' and x.shape == (4, 1, 64, 64)
    assert learn.model.encoder.in_chans == 1 and learn.model.key_encoder.in_chans == 1
    views = learn.moco.views(x)
    assert views.view1.shape == views.view2.shape == (4, 1, 64, 64)
    assert len(learn.recorder.losses) == 2 and all(math.isfinite(float(v)) for v in learn.recorder.losses)
    assert not torch.equal(learn.model.encoder.model.conv1.weight, learn.conv1_before)  # the steps trained it


def test_export_reloads_in_plain_timm(pretrained):
    learn, x, path = pretrained
    enc = learn.model.encoder.eval()
    file = timm.create_model('resnet18', pretrained=True, num_classes=0, in_chans=1, pretrained_cfg_overlay=dict(file=str(path))).eval()
    folder = timm.create_model(f'local-dir:{path.parent/"folder"}', pretrained=True).eval()  # in_chans and num_classes from its config.json
    with torch.no_grad():
        for m in (file, folder):
            assert m.conv1.in_channels == 1 and m.num_classes == 0
            torch.testing.assert_close(m(x), enc(x))


def test_unet_finetunes_on_green_channel(drive, pretrained):
    train, test = drive
    _, _, path = pretrained
    dls = segmentation_dls(train, codes=['background', 'vessel'], size=128, bs=4, valid_pct=0.25, channels='green')
    learn = segmentation_learner(dls, path, verbose=False)
    assert learn.model.load_report.ok
    assert input_channels(learn.model) == 1 and dls.one_batch()[0].shape == (4, 1, 128, 128)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)   # 6 train images: one step
    cfg = segmentation_config(learn)
    assert cfg['preprocess'] == 'green' and np.allclose(cfg['stats'], GREEN_STATS)
    prob = predict_segmentation(learn.model, test.image.iloc[0], window=128, fov_rescale=True)
    assert prob.shape == read_image(test.image.iloc[0]).shape[:2] == (584, 565)
    table, means = evaluate_segmentation(learn.model, test, window=128, fov_rescale=True)
    assert len(table) == 2 and 0 <= means.dice <= 1 and math.isfinite(means.auc)
