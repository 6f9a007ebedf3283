"SimCLR, Barlow Twins and VICReg through the console script's `pretrain`, and their settings in a run's record."
import json
import pytest
import torch
from fundus_ssl.cli import pretrain, pretrain_defaults, _settings
from fundus_ssl.losses import barlow_twins_loss, vicreg_loss, dino_loss

@pytest.mark.parametrize('method', ['simclr', 'barlow_twins', 'vicreg'])
def test_pretrain_runs_each_method(method, tmp_path):
    m = pretrain(method=method, n_images=16, image_size=32, batch_size=8, epochs=1, projector_dim=32, out_dir=str(tmp_path))
    assert m['method'] == method and m['steps'] >= 1 and m['export_ok']
    assert all(torch.isfinite(torch.tensor(l['loss'])) for l in json.loads((tmp_path/'losses.json').read_text()))

def test_method_parameters_recorded_for_their_method_only():
    "A MoCo run's record is what it was before these methods existed (its checkpoints still resume); each method records its own."
    new = {'simclr_temperature', 'barlow_lambda', 'projector_dim'}
    assert not new & set(_settings(pretrain_defaults()))
    assert new & set(_settings(pretrain_defaults() | dict(method='barlow_twins'))) == {'barlow_lambda', 'projector_dim'}
    assert new & set(_settings(pretrain_defaults() | dict(method='simclr'))) == {'simclr_temperature'}

def test_losses_keep_float32_under_autocast():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp = [barlow_twins_loss(a, b), vicreg_loss(a, b).loss, dino_loss([a, b, a], [a, b], torch.zeros(8))]
    exact = [barlow_twins_loss(a, b), vicreg_loss(a, b).loss, dino_loss([a, b, a], [a, b], torch.zeros(8))]
    for x, y in zip(amp, exact): assert x.dtype == torch.float32 and torch.equal(x, y)

def test_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda x, y: barlow_twins_loss(x, y), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: vicreg_loss(x, y).loss, (a, b))
    s = [torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    t = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    assert torch.autograd.gradcheck(lambda *s: dino_loss(list(s), t, torch.zeros(5, dtype=torch.float64)), tuple(s))

@pytest.mark.parametrize('views', ['method', 'fixed'])
def test_pretrain_runs_dino(views, tmp_path):
    "DINO through the console script: its multi-crop views (or three fixed recipes), a small head, an export timm reads."
    m = pretrain(method='dino', n_images=16, image_size=32, batch_size=8, epochs=1, dino_out_dim=64, dino_n_local=2, views=views, out_dir=str(tmp_path))
    assert m['method'] == 'dino' and m['steps'] >= 1 and m['export_ok']
    assert all(torch.isfinite(torch.tensor(l['loss'])) for l in json.loads((tmp_path/'losses.json').read_text()))
    assert {'dino_out_dim', 'dino_n_local'} <= set(json.loads((tmp_path/'run.json').read_text()))

@pytest.mark.parametrize('method', ['simclr', 'barlow_twins', 'vicreg', 'dino'])
def test_methods_on_a_real_pool(method, tmp_path):
    "Each new method pretrains on real fundus images (16 EyeDiseases4class images listed in a CSV), CPU smoke scale."
    import os
    from pathlib import Path
    import pandas as pd
    data = os.environ.get('FUNDUS_DATA')
    if not data: pytest.skip('FUNDUS_DATA is unset')
    images = sorted(p for c in ('cataract', 'diabetic_retinopathy', 'glaucoma', 'normal')
                    for p in sorted((Path(data)/'EyeDiseases4class_256'/c).iterdir())[:4])
    pd.DataFrame({'image': [str(p) for p in images]}).to_csv(tmp_path/'pool.csv', index=False)
    m = pretrain(method=method, reader='table', root=str(tmp_path/'pool.csv'), image_size=32, batch_size=8, epochs=1,
                 projector_dim=32, dino_out_dim=64, dino_n_local=2, out_dir=str(tmp_path/'run'))
    assert m['method'] == method and m['steps'] >= 1 and m['export_ok']
    assert all(torch.isfinite(torch.tensor(l['loss'])) for l in json.loads((tmp_path/'run'/'losses.json').read_text()))
