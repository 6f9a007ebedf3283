"Encoders exported as folders in timm's hub format: plain timm, in a process that never imports fundus_ssl, gives the package's features."
import json, os, subprocess, sys, textwrap
import pytest, timm, torch
from safetensors.torch import load_file, save_file
from fundus_ssl.models import create_encoder, export_encoder, load_encoder_weights

# every model random-init and local: nothing is downloaded
MODELS = {'resnet': ('resnet18', {}, (3, 64, 64)),
          'vit': ('vit_tiny_patch16_224', dict(img_size=64, patch_size=8), (3, 64, 64)),
          'gray': ('resnet10t', dict(in_chans=1), (1, 48, 48))}

TIMM_ALONE = textwrap.dedent("""
    import sys
    import torch, timm
    from safetensors.torch import load_file, save_file
    torch.set_num_threads(1)
    out = {}
    for folder in sys.argv[2:]:
        model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
        x = load_file(f'{folder}/input.safetensors')['x']
        with torch.no_grad(): out[folder.rsplit('/', 1)[-1]] = model(x).contiguous()
    assert not any(m.startswith('fundus_ssl') for m in sys.modules), 'timm alone imported fundus_ssl'
    save_file(out, sys.argv[1])
    """)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    "Each model: created by the package, exported as a folder with an input and the package's features on it."
    tmp = tmp_path_factory.mktemp('export')
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        feats = {}
        for key, (name, kwargs, shape) in MODELS.items():
            torch.manual_seed(0)
            enc = create_encoder(name, **kwargs).eval()
            export_encoder(enc, tmp/key)
            x = torch.randn(2, *shape)
            save_file({'x': x}, str(tmp/key/'input.safetensors'))
            with torch.no_grad(): feats[key] = enc(x)
    finally: torch.set_num_threads(threads)
    return tmp, feats


def test_timm_alone_gives_the_package_features(exported):
    tmp, feats = exported
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'} | {'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
    res = subprocess.run([sys.executable, '-c', TIMM_ALONE, str(tmp/'timm.safetensors'), *(str(tmp/k) for k in MODELS)],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = load_file(tmp/'timm.safetensors')
    for key in MODELS:
        assert got[key].shape == feats[key].shape
        assert (got[key] - feats[key]).abs().max().item() == 0, key


def test_config_records_the_timm_arguments(exported):
    tmp, _ = exported
    vit = json.loads((tmp/'vit'/'config.json').read_text())
    assert vit['architecture'] == 'vit_tiny_patch16_224' and vit['num_classes'] == 0 and vit['num_features'] == 192
    assert vit['model_args']['img_size'] == [64, 64] and vit['model_args']['patch_size'] == 8
    assert vit['pretrained_cfg']['input_size'] == [3, 64, 64] and 'tag' not in vit['pretrained_cfg']
    gray = json.loads((tmp/'gray'/'config.json').read_text())
    assert gray['model_args']['in_chans'] == 1 and gray['pretrained_cfg']['input_size'][0] == 1
    assert sorted(p.name for p in (tmp/'resnet').iterdir()) == ['config.json', 'input.safetensors', 'model.safetensors']


@pytest.mark.parametrize('key', list(MODELS))
def test_package_loaders_read_the_folder(exported, key):
    tmp, feats = exported
    name, kwargs, shape = MODELS[key]
    x = load_file(tmp/key/'input.safetensors')['x']
    back = create_encoder(pretrained=tmp/key).eval()  # architecture and arguments from config.json
    assert back.name == name and back.model.in_chans == shape[0]
    target = timm.create_model(name, num_classes=0, **kwargs).eval()
    assert load_encoder_weights(target, tmp/key, strict=True).ok
    with torch.no_grad():
        assert torch.allclose(back(x), feats[key], atol=1e-5) and torch.allclose(target(x), feats[key], atol=1e-5)


def test_vit_file_export_keeps_its_arguments(tmp_path):
    "A file export of a ViT at another size: the arguments go in its metadata and build the encoder back."
    vit = create_encoder('vit_tiny_patch16_224', img_size=64, patch_size=8).eval()
    export_encoder(vit, tmp_path/'vit.safetensors')
    back = create_encoder('vit_tiny_patch16_224', pretrained=tmp_path/'vit.safetensors').eval()
    assert back.model.patch_embed.patch_size == (8, 8)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(): assert torch.allclose(back(x), vit(x), atol=1e-6)


def test_checkpoint_needs_the_arguments_that_change_shapes(tmp_path):
    vit = create_encoder('vit_tiny_patch16_224', img_size=64, patch_size=8)
    sd = {f'encoder.model.{k}': v for k, v in vit.model.state_dict().items()}
    with pytest.raises(ValueError, match='pass them as model_args'):
        export_encoder(sd, tmp_path/'out', name='vit_tiny_patch16_224')
    report = export_encoder(sd, tmp_path/'out', name='vit_tiny_patch16_224', model_args=dict(img_size=64, patch_size=8))
    assert report.ok and json.loads((tmp_path/'out'/'config.json').read_text())['model_args']['patch_size'] == 8
    # an exported folder is a source too: re-exported as a file, with its arguments
    export_encoder(tmp_path/'out', tmp_path/'again.safetensors')
    assert create_encoder(pretrained=tmp_path/'again.safetensors').model.patch_embed.patch_size == (8, 8)


def test_training_module_exports_its_encoder_arguments(tmp_path):
    "A module holding an encoder (MoCo-like): the arguments timm recorded on the encoder are found inside it."
    class Method(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = create_encoder('vit_tiny_patch16_224', img_size=32, patch_size=8)
            self.projector = torch.nn.Linear(192, 16)
    report = export_encoder(Method(), tmp_path/'m', name='vit_tiny_patch16_224')
    assert report.unexpected == ['projector.weight', 'projector.bias']
    assert json.loads((tmp_path/'m'/'config.json').read_text())['model_args']['img_size'] == [32, 32]


def test_bad_targets_and_configs(tmp_path):
    enc = create_encoder('resnet10t')
    with pytest.raises(ValueError, match=r'\*\.safetensors file, or a folder'): export_encoder(enc, tmp_path/'w.pth')
    (tmp_path/'bad').mkdir(); (tmp_path/'bad'/'config.json').write_text('{not json')
    save_file(enc.model.state_dict(), str(tmp_path/'bad'/'model.safetensors'))
    with pytest.raises(ValueError, match='config.json: not valid JSON'): create_encoder(pretrained=tmp_path/'bad')
    with pytest.raises(ValueError, match='names the weights already'): create_encoder(f'local-dir:{tmp_path}', pretrained=tmp_path)
    with pytest.raises(ValueError, match='pass name'): create_encoder()
