"Heavier checks of fundus_ssl.models: safe loading, timm/fastai interop, ImageNet look-up, U-Net bodies."
import argparse, pickle, re, socket, warnings
from pathlib import Path

import pytest, timm, torch
from torch import nn
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.vision.learner import create_body
from fastai.vision.models.unet import DynamicUnet
from torch.utils.data import TensorDataset
from torchvision.models import resnet18 as tv_resnet18

from fundus_ssl.models import (CheckpointError, Encoder, PartialLoadWarning, WEIGHTS_ENV, check_positive, create_encoder,
                               encoder_stages, export_encoder, imagenet_weights, load_encoder_weights, read_state_dict)

torch.set_num_threads(1)
X = torch.randn(2, 3, 64, 64)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    "Any attempt to open a connection fails the test: nothing in this module may download."
    def refuse(*args, **kwargs): raise AssertionError(f'network access attempted: {args}')
    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)


@pytest.fixture(scope='module')
def r18(tmp_path_factory):
    "A trained-looking resnet18 encoder (BN statistics moved) and its export."
    torch.manual_seed(0)
    enc = create_encoder('resnet18')
    with torch.no_grad(): enc(torch.randn(8, 3, 64, 64))  # move running stats off their init values
    path = tmp_path_factory.mktemp('r18')/'r18.safetensors'
    export_encoder(enc, path)
    return enc.eval(), path


def same_weights(a: dict, b: dict, pairs=None):
    pairs = pairs or {k: k for k in a}
    return all(torch.equal(a[k], b[v]) for k, v in pairs.items())


# --- no code from checkpoints ---------------------------------------------------------------------

class Payload:
    "Unpickling this object creates `marker`: what a malicious checkpoint would do."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (Path.touch, (self.marker,))


def evil_files(tmp_path):
    marker = tmp_path/'pwned'
    with open(tmp_path/'raw.pkl', 'wb') as f: pickle.dump({'conv1.weight': torch.zeros(1), 'x': Payload(marker)}, f)
    torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}, 'x': Payload(marker)}, tmp_path/'zip.pth')
    (tmp_path/'hub').mkdir()
    torch.save({'conv1.weight': Payload(marker)}, tmp_path/'hub'/'pytorch_model.bin')
    return marker, [tmp_path/'raw.pkl', tmp_path/'zip.pth', tmp_path/'hub']


def test_payload_would_run(tmp_path):
    "The payload really runs when unpickled normally (so the next test can fail)."
    marker = tmp_path/'ran'
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize('reader', ['read_state_dict', 'load_encoder_weights', 'create_encoder', 'export_encoder'])
def test_malicious_checkpoint_refused(tmp_path, reader):
    marker, files = evil_files(tmp_path)
    calls = {'read_state_dict': lambda p: read_state_dict(p),
             'load_encoder_weights': lambda p: load_encoder_weights(timm.create_model('resnet18', num_classes=0), p),
             'create_encoder': lambda p: create_encoder('resnet18', pretrained=p),
             'export_encoder': lambda p: export_encoder(p, tmp_path/'out.safetensors', name='resnet18')}
    for f in files:
        with pytest.raises(CheckpointError, match='not a plain tensor checkpoint') as e: calls[reader](f)
        assert str(f.name) in str(e.value)
    assert not marker.exists()


def test_training_checkpoint_with_objects_refused(tmp_path):
    "timm's train.py saves argparse args next to the weights: refused with the reason, not unpickled."
    torch.save({'state_dict': {'a': torch.zeros(1)}, 'args': argparse.Namespace(lr=0.1)}, tmp_path/'ckpt.pth.tar')
    with pytest.raises(CheckpointError, match='Namespace'): read_state_dict(tmp_path/'ckpt.pth.tar')


def test_corrupt_files_named(tmp_path):
    (tmp_path/'bad.safetensors').write_bytes(b'\x00garbage')
    (tmp_path/'bad.pth').write_bytes(b'garbage')
    for f in ['bad.safetensors', 'bad.pth']:
        with pytest.raises(CheckpointError, match=f): read_state_dict(tmp_path/f)
    torch.save([torch.zeros(1)], tmp_path/'list.pth')
    with pytest.raises(CheckpointError, match='expected a dict of tensors'): read_state_dict(tmp_path/'list.pth')


def not_weights(tmp_path):
    "Files a user may pass by mistake: (file, what the error must say)."
    tmp_path.mkdir(exist_ok=True)
    torch.save(timm.create_model('resnet18', num_classes=0).state_dict(), tmp_path/'whole.pth')
    cases = {'empty.pth': (b'', 'empty file (0 bytes)'), 'empty.safetensors': (b'', 'empty file (0 bytes)'),
             'empty.bin': (b'', 'empty file (0 bytes)'),
             'readme.pth': (b'These are the weights of our best run.\n', 'not a weight file: it holds text'),
             'page.safetensors': (b'<!DOCTYPE html><html>404</html>', 'not a weight file: it holds text (not a safetensors header)'),
             'cut.pth': ((tmp_path/'whole.pth').read_bytes()[:4096], 'not a readable torch checkpoint')}
    for name, (content, _) in cases.items(): (tmp_path/name).write_bytes(content)
    return {tmp_path/name: msg for name, (_, msg) in cases.items()}


@pytest.mark.parametrize('reader', ['read_state_dict', 'load_encoder_weights', 'create_encoder', 'export_encoder'])
def test_files_without_weights_named(tmp_path, reader):
    "Empty, text and truncated files: a CheckpointError naming the file and what it holds (was IndexError, KeyError: 101)."
    calls = {'read_state_dict': lambda p: read_state_dict(p),
             'load_encoder_weights': lambda p: load_encoder_weights(timm.create_model('resnet18', num_classes=0), p),
             'create_encoder': lambda p: create_encoder('resnet18', pretrained=p),
             'export_encoder': lambda p: export_encoder(p, tmp_path/'out.safetensors', name='resnet18')}
    for path, msg in not_weights(tmp_path/'files').items():
        with pytest.raises(CheckpointError, match=re.escape(f'{path}: {msg}')): calls[reader](path)


def test_safetensors_content_under_another_name(tmp_path, r18):
    enc, path = r18
    (tmp_path/'pytorch_model.bin').write_bytes(path.read_bytes())   # a hub folder with a mislabelled file
    assert same_weights(read_state_dict(tmp_path), enc.model.state_dict())


# --- parameters -----------------------------------------------------------------------------------

@pytest.mark.parametrize('bad', [0, -1, 0.5, 2.0, '8', None, True, float('nan')])
def test_check_positive(bad):
    with pytest.raises(ValueError, match=re.escape(f'bs={bad!r}: expected a positive int')): check_positive('bs', bad)
    assert check_positive('bs', 8) == 8 and check_positive('lr', 0.5, integer=False) == 0.5


def test_unknown_timm_name():
    with pytest.raises(ValueError, match=r"name='resnet_nope': not a timm model name.*list_models\('resnet\*'\)"):
        create_encoder('resnet_nope')
    with pytest.raises(ValueError, match=r"close: .*convnext_tiny"): create_encoder('convnext_tinny')
    with pytest.raises(ValueError, match='in_chans=0: expected a positive int'): create_encoder('resnet18', in_chans=0)


# --- export: the plain timm state dict ------------------------------------------------------------

@pytest.mark.parametrize('name', ['resnet18', 'efficientnet_b0', 'convnext_atto'])
def test_export_loads_with_timm_create_model(tmp_path, name):
    enc = create_encoder(name).eval()
    path = tmp_path/f'{name}.safetensors'
    report = export_encoder(enc, path)
    assert report.ok and report.unexpected == []
    overlay = dict(file=str(path))
    feats = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0).eval()
    with torch.no_grad(): torch.testing.assert_close(feats(X), enc(X))
    headed = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=5)
    assert same_weights(enc.model.state_dict(), headed.state_dict())
    # timm's default head (1000 classes) loads strictly: an SSL encoder has no classifier to give it
    with pytest.raises(RuntimeError, match='Missing key'):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    default = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=0))
    assert default.num_classes == 0 and same_weights(enc.model.state_dict(), default.state_dict())


def test_export_strips_method_keys(tmp_path, r18):
    "A MoCo-like checkpoint: query encoder kept; key encoder, projector, queue dropped and reported."
    enc, _ = r18
    sd = enc.state_dict()
    ckpt = {'epoch': 3, 'state_dict': {**{f'module.encoder_q.{k}': v for k, v in sd.items()},
                                       **{f'module.encoder_k.{k}': v + 1 for k, v in sd.items() if v.is_floating_point()},
                                       'module.projector.0.weight': torch.randn(4, 512), 'module.queue': torch.randn(128, 16)}}
    torch.save(ckpt, tmp_path/'moco.pth')
    report = export_encoder(tmp_path/'moco.pth', tmp_path/'enc.safetensors', name='resnet18')
    assert report.stripped == ['module.', 'encoder_q.', 'model.']
    assert 'module.queue' in report.unexpected and 'module.projector.0.weight' in report.unexpected
    assert len(report.unexpected) == 2 + sum(v.is_floating_point() for v in sd.values())
    assert same_weights(enc.model.state_dict(), read_state_dict(tmp_path/'enc.safetensors'))
    with pytest.raises(ValueError, match='does not hold a complete resnet18'):
        export_encoder({'conv1.weight': torch.zeros(64, 3, 7, 7)}, tmp_path/'x.safetensors', name='resnet18')


def test_one_channel_export_roundtrip(tmp_path, r18):
    _, path = r18
    gray = create_encoder('resnet18', pretrained=path, in_chans=1).eval()
    export_encoder(gray, tmp_path/'gray.safetensors')
    m = timm.create_model('resnet18', pretrained=True, in_chans=1, num_classes=0,
                          pretrained_cfg_overlay=dict(file=str(tmp_path/'gray.safetensors'))).eval()
    g = torch.rand(2, 1, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(m(g), gray(g))


# --- in_chans -------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['resnet18', 'efficientnet_b0'])
def test_gray_encoder_equals_rgb_on_replicated_gray(tmp_path, name):
    rgb = create_encoder(name).eval()
    export_encoder(rgb, tmp_path/'w.safetensors')
    gray = create_encoder(name, pretrained=tmp_path/'w.safetensors', in_chans=1).eval()
    assert len(gray.load_report.adapted) == 1 and '3 -> 1 channels' in gray.load_report.adapted[0]
    g = torch.rand(2, 1, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(gray(g), rgb(g.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)


# --- loading into fastai models -------------------------------------------------------------------

def test_timm_weights_into_fastai_create_body(r18):
    "fastai numbers a torchvision ResNet's children (0 conv1, 1 bn1, 4 layer1...): keys remapped by structure."
    enc, path = r18
    body = create_body(tv_resnet18(weights=None), pretrained=False).eval()
    report = load_encoder_weights(body, path)
    assert report.ok and report.by == 'structure' and report.target == 'Sequential'
    assert len(report.matched) == len(body.state_dict()) == 120
    torch.testing.assert_close(body[4][1].bn2.running_mean, enc.model.layer1[1].bn2.running_mean)
    with torch.no_grad(): torch.testing.assert_close(body(X), enc.forward_features(X))  # same network, same maps


def test_timm_weights_into_one_channel_fastai_body(r18):
    enc, path = r18
    body = create_body(tv_resnet18(weights=None), n_in=1, pretrained=False)
    report = load_encoder_weights(body, path, strict=True)
    assert report.adapted == ['0.weight (3 -> 1 channels)']
    torch.testing.assert_close(body[0].weight, enc.model.conv1.weight.sum(1, keepdim=True))


def test_fastai_unet_checkpoint_back_to_timm(tmp_path, r18):
    "A U-Net fine-tuned with fastai (`learn.save` with the optimizer) gives its encoder back to timm."
    enc, path = r18
    unet = DynamicUnet(create_body(tv_resnet18(weights=None), pretrained=False), n_out=2, img_size=(64, 64))
    assert load_encoder_weights(unet, path).target == 'DynamicUnet.layers.0'
    dls = DataLoaders.from_dsets(TensorDataset(X, torch.zeros(2, 2, 64, 64)), TensorDataset(X, torch.zeros(2, 2, 64, 64)), bs=2)
    learn = Learner(dls, unet, loss_func=nn.MSELoss(), path=tmp_path)
    learn.create_opt()
    saved = learn.save('unet')
    m = timm.create_model('resnet18', num_classes=0)
    report = load_encoder_weights(m, saved, prefix='layers.0.', strict=True)
    assert report.by == 'structure' and len(report.matched) == 120
    assert all(k.startswith('layers.') and not k.startswith('layers.0.') for k in report.unexpected)  # the decoder
    assert same_weights(enc.model.state_dict(), m.state_dict())


@pytest.mark.parametrize('name', ['resnet18', 'efficientnet_b0', 'convnext_atto'])
def test_dynamic_unet_on_encoder_stages(tmp_path, name):
    enc = create_encoder(name)
    body = encoder_stages(enc)
    unet = DynamicUnet(body, n_out=3, img_size=(64, 64))
    assert unet(X).shape == (2, 3, 64, 64)
    enc.eval()
    with torch.no_grad(): torch.testing.assert_close(body(X), enc.feature_maps(X)[-1])
    trained = create_encoder(name)
    export_encoder(trained, tmp_path/'w.safetensors')
    report = load_encoder_weights(unet, tmp_path/'w.safetensors', strict=True)
    assert report.target == 'DynamicUnet.layers.0' and report.ok
    timm_name = lambda k: re.sub(r'^([a-z]+)_(\d+)\.', r'\1.\2.', k)  # flattened stage 'blocks_3.' is timm's 'blocks.3.'
    assert same_weights(unet.layers[0].state_dict(), trained.model.state_dict(), {k: timm_name(k) for k in unet.layers[0].state_dict()})


def test_encoder_stages_keeps_modes_and_refuses_vit():
    enc = create_encoder('resnet18')
    enc.model.layer1.eval()  # a partly frozen encoder
    encoder_stages(enc)
    assert enc.model.training and enc.model.layer2.training and not enc.model.layer1.training
    with pytest.raises(ValueError, match='cannot be a U-Net body'): encoder_stages(create_encoder('vit_tiny_patch16_224', img_size=64))
    with pytest.raises(TypeError, match='needs an Encoder or a timm model'): encoder_stages(nn.Sequential(nn.Conv2d(3, 3, 1)))


# --- prefixes, mismatches, strictness -------------------------------------------------------------

@pytest.mark.parametrize('wrap,stripped', [('module.', ['module.']), ('_orig_mod.', ['_orig_mod.']),
                                           ('backbone.', ['backbone.']), ('module.encoder.model.', ['module.', 'encoder.', 'model.'])])
def test_wrapping_prefixes(r18, wrap, stripped):
    enc, _ = r18
    sd = {f'{wrap}{k}': v for k, v in enc.model.state_dict().items()}
    sd.update({'momentum_backbone.conv1.weight': torch.zeros(1), 'projector.0.weight': torch.zeros(1)})
    m = timm.create_model('resnet18', num_classes=0)
    report = load_encoder_weights(m, sd, strict=True)
    assert report.stripped == stripped and report.ok and report.source == 'state dict'
    assert set(report.unexpected) == {'momentum_backbone.conv1.weight', 'projector.0.weight'}
    assert same_weights(enc.model.state_dict(), m.state_dict())


def test_into_encoder_and_from_encoder(r18):
    enc, path = r18
    target = create_encoder('resnet18')
    report = load_encoder_weights(target, path)
    assert report.target == 'Encoder.model' and report.ok
    m = timm.create_model('resnet18', num_classes=0)
    assert load_encoder_weights(m, enc).stripped == ['model.']  # a module as the source
    assert same_weights(enc.model.state_dict(), m.state_dict())


def test_shape_mismatch_reported_and_strict_loads_nothing(r18):
    enc, _ = r18
    sd = dict(enc.model.state_dict()); sd['layer2.0.conv1.weight'] = torch.zeros(128, 64, 5, 5)
    m = timm.create_model('resnet18', num_classes=0)
    before = m.conv1.weight.clone()
    with pytest.raises(ValueError, match='layer2.0.conv1.weight'): load_encoder_weights(m, sd, strict=True)
    assert torch.equal(m.conv1.weight, before)
    report = load_encoder_weights(m, sd)
    assert list(report.mismatched) == ['layer2.0.conv1.weight'] and len(report.matched) == 119
    assert 'mismatched 1: layer2.0.conv1.weight (128, 64, 5, 5) vs (128, 64, 3, 3)' in repr(report)
    assert torch.equal(m.conv1.weight, enc.model.conv1.weight)


def test_strict_pretrained_of_other_architecture(r18):
    _, path = r18
    with pytest.raises(ValueError, match='strict=True, nothing loaded'): create_encoder('resnet34', pretrained=path)


def test_other_architecture_warns_with_counts(r18):
    "resnet18 weights fill 120 of resnet34's 216 tensors: loaded, with a warning that gives the counts."
    _, path = r18
    m = timm.create_model('resnet34', num_classes=0)
    with pytest.warns(PartialLoadWarning, match=re.escape(f'120 of 216 tensors of ResNet loaded from {path}: 96 missing, '
                                                          '0 of another shape, 0 unexpected')):
        report = load_encoder_weights(m, path)
    assert len(report.matched) == 120 and report.n_target == 216


def test_under_half_loaded_refused(r18):
    "resnet18 weights into a resnet50 (97 of 318 tensors fit): refused, nothing loaded, unless min_loaded says otherwise."
    _, path = r18
    m = timm.create_model('resnet50', num_classes=0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r'only 97 of 318 tensors .* 198 missing, 23 of another shape, 0 unexpected; under min_loaded=0.5 of them, nothing was loaded'):
        load_encoder_weights(m, path)
    assert same_weights(before, m.state_dict())
    with pytest.warns(PartialLoadWarning): report = load_encoder_weights(m, path, min_loaded=0)
    assert len(report.matched) == 97
    with pytest.raises(ValueError, match='min_loaded=1.5: expected a share'): load_encoder_weights(m, path, min_loaded=1.5)


def test_complete_load_is_silent(r18):
    _, path = r18
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert load_encoder_weights(timm.create_model('resnet18', num_classes=0), path).ok


def test_encoder_rejects_head():
    with pytest.raises(ValueError, match='num_classes=0'): Encoder(timm.create_model('resnet18'))


# --- ImageNet weights from local folders only -----------------------------------------------------

def test_imagenet_from_env_folder(tmp_path, monkeypatch, r18):
    enc, path = r18
    (tmp_path/'resnet18.a1_in1k').mkdir()
    (tmp_path/'resnet18.a1_in1k'/'model.safetensors').write_bytes(path.read_bytes())
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    got = create_encoder('resnet18', pretrained='imagenet')
    assert got.load_report.source == str(tmp_path/'resnet18.a1_in1k'/'model.safetensors')
    assert same_weights(enc.model.state_dict(), got.model.state_dict())
    (tmp_path/'resnet18.safetensors').write_bytes(path.read_bytes())  # the plain name comes first
    assert imagenet_weights('resnet18') == tmp_path/'resnet18.safetensors'


def test_imagenet_from_hf_cache(tmp_path, monkeypatch, r18):
    _, path = r18
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path))
    snap = tmp_path/'models--timm--resnet18.tv_in1k'/'snapshots'/'0123abcd'
    snap.mkdir(parents=True)
    (snap/'model.safetensors').write_bytes(path.read_bytes())
    assert imagenet_weights('resnet18.tv_in1k') == snap/'model.safetensors'
    with pytest.raises(FileNotFoundError, match='models--timm--resnet18.a1_in1k'): imagenet_weights('resnet18')


def test_imagenet_missing_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path/'hf'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))
    with pytest.raises(FileNotFoundError) as e: create_encoder('efficientnet_b0', pretrained='imagenet')
    msg = str(e.value)
    for part in ['never downloads', str(tmp_path/'efficientnet_b0.ra_in1k'/'model.safetensors'),
                 'models--timm--efficientnet_b0.ra_in1k', str(tmp_path/'torch'), f'${WEIGHTS_ENV}/efficientnet_b0.ra_in1k/']:
        assert part in msg, part
