"Whitening layers: output covariance, running statistics, gradients, precision, and swapping into a timm ResNet."
from functools import partial
import pytest
import torch
from torch import nn
import timm
from fundus_ssl.layers import ZCAWhitening, IterNorm, replace_last_norm

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def with_spectrum(n, eigenvalues, seed=0):
    "n float64 samples whose (biased) covariance has exactly these eigenvalues (fixed random eigenvectors), mean 3."
    g = torch.Generator().manual_seed(seed)
    c = len(eigenvalues)
    u, _ = torch.linalg.qr(torch.randn(c, c, generator=torch.Generator().manual_seed(c), dtype=torch.float64))  # fixed basis
    w = torch.randn(n, c, generator=g, dtype=torch.float64)
    w, _ = torch.linalg.qr(w - w.mean(0))
    return (w * n ** 0.5 * torch.tensor(eigenvalues, dtype=torch.float64).sqrt()) @ u.T + 3.0

def channel_cov(x):
    xt = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    xc = xt - xt.mean(1, keepdim=True)
    return xc @ xc.T / xt.shape[1]

def as_maps(x, h=4, w=4):
    "[N*h*w, C] samples as feature maps [N, C, h, w] (same set of channel vectors)."
    return x.view(-1, h, w, x.shape[1]).permute(0, 3, 1, 2)

EYE = lambda c: torch.eye(c, dtype=torch.float64)


@pytest.mark.parametrize('shape', ['vectors', 'maps'])
def test_zca_whitens_exactly(shape):
    x = with_spectrum(1024, [0.01, 0.1, 1.0, 4.0, 9.0, 30.0])
    x = x if shape == 'vectors' else as_maps(x)
    y = ZCAWhitening(6, eps=0, affine=False).double()(x)
    torch.testing.assert_close(channel_cov(y), EYE(6), atol=1e-9, rtol=0)
    assert y.shape == x.shape

def test_zca_eps_shrinks_as_documented():
    x = with_spectrum(512, [1.0, 2.0])
    ev = torch.linalg.eigvalsh(channel_cov(ZCAWhitening(2, eps=0.5, affine=False).double()(x)))
    torch.testing.assert_close(ev, torch.tensor([1 / 1.5, 2 / 2.5], dtype=torch.float64))   # lambda / (lambda + eps)

def test_iternorm_close_to_identity_when_well_conditioned():
    x = with_spectrum(1024, [1.0, 1.3, 1.7, 2.0], seed=1)
    cov = channel_cov(IterNorm(4, T=5, eps=0, affine=False).double()(x))
    assert (cov - EYE(4)).abs().max() < 0.01                     # the documented tolerance for c = 4, T = 5
    x16 = with_spectrum(2048, torch.linspace(1, 2, 16).tolist(), seed=2)
    grouped = channel_cov(IterNorm(16, group_size=4, eps=0, affine=False).double()(x16))
    for g in range(4):
        blk = slice(4 * g, 4 * g + 4)
        assert (grouped[blk, blk] - EYE(4)).abs().max() < 0.01

def test_iternorm_converges_with_more_iterations():
    x = with_spectrum(1024, torch.linspace(1, 3, 16).tolist(), seed=3)
    err = [(channel_cov(IterNorm(16, T=T, eps=0, affine=False).double()(x)) - EYE(16)).abs().max().item() for T in (1, 3, 5, 7, 20)]
    assert all(a > b for a, b in zip(err, err[1:])) and err[-1] < 1e-9     # Newton: quadratic convergence

@pytest.mark.parametrize('layer', [ZCAWhitening, IterNorm])
def test_eval_uses_running_stats(layer):
    m = layer(5, momentum=1.0).double()
    with torch.no_grad():
        m.weight.uniform_(0.5, 2); m.bias.uniform_(-1, 1)
    x = with_spectrum(200, [0.5, 1, 2, 3, 4], seed=4)
    y_train = m(x)
    torch.testing.assert_close(m.running_mean, x.mean(0))
    m.eval()
    torch.testing.assert_close(m(x), y_train)                   # momentum 1: running = last batch
    other = with_spectrum(200, [9, 1, 1, 1, 1], seed=5)
    mixed = torch.cat([x[:7], other])
    torch.testing.assert_close(m(mixed)[:7], m(x[:7]))         # independent of batch composition
    torch.testing.assert_close(m(x[:1]), y_train[:1])
    assert not torch.allclose(m.train()(x[:7]), y_train[:7])      # train mode uses the batch's own statistics

@pytest.mark.parametrize('layer', [ZCAWhitening, IterNorm])
def test_running_stats_converge_and_survive_state_dict(layer):
    m = layer(4, affine=False).double()
    for s in range(60): m(with_spectrum(256, [0.5, 1, 2, 4], seed=s))
    m.eval()
    test = with_spectrum(4096, [0.5, 1, 2, 4], seed=999)
    cov = channel_cov(m(test))
    tol = 0.05 if layer is ZCAWhitening else 0.1
    assert (cov - EYE(4)).abs().max() < tol
    fresh = layer(4, affine=False).double().eval()
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(fresh(test), m(test))

@pytest.mark.parametrize('layer', [partial(ZCAWhitening, 3), partial(IterNorm, 3, T=4), partial(IterNorm, 6, num_groups=2)])
def test_gradcheck(layer):
    m = layer().double()
    with torch.no_grad(): m.weight.uniform_(0.5, 2)
    x = torch.randn(5, m.num_features, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))
    m.eval()
    assert torch.autograd.gradcheck(m, (x,))

@pytest.mark.parametrize('device', DEVICES)
def test_autocast_keeps_statistics_in_fp32(device):
    x = with_spectrum(512, [0.01, 0.1, 1, 10], seed=6).float().to(device)
    dtype = torch.float16 if device == 'cuda' else torch.bfloat16
    ref = IterNorm(4, affine=False).to(device)(x)
    with torch.autocast(device, dtype=dtype):
        out = IterNorm(4, affine=False).to(device)(x)
    assert out.dtype == torch.float32 and out.device.type == device
    torch.testing.assert_close(out, ref)

def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r'expects input \[N, 4, \*\], got shape \(2, 3\)'): IterNorm(4)(torch.randn(2, 3))
    with pytest.raises(ValueError, match='T=0 must be at least 1'): IterNorm(4, T=0)

def test_replace_last_norm_resnet18_forward_backward():
    torch.manual_seed(0)
    enc = timm.create_model('resnet18', pretrained=False, num_classes=0)
    replace_last_norm(enc, partial(IterNorm, T=5))
    assert isinstance(enc.layer4[1].bn2, IterNorm) and enc.layer4[1].bn2.num_features == 512
    assert sum(isinstance(m, IterNorm) for m in enc.modules()) == 1
    x = torch.randn(4, 3, 64, 64)
    out = enc(x)
    assert out.shape == (4, 512) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert enc.conv1.weight.grad.abs().sum() > 0
    enc.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(x[:2]), enc(x)[:2], atol=1e-5, rtol=1e-5)

def test_replace_last_norm_names_resnet50_block():
    enc = timm.create_model('resnet50', pretrained=False, num_classes=0)
    replace_last_norm(enc, ZCAWhitening)
    assert isinstance(enc.layer4[2].bn3, ZCAWhitening) and enc.layer4[2].bn3.num_features == 2048

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_replace_last_norm_keeps_device():
    enc = timm.create_model('resnet18', pretrained=False, num_classes=0).cuda()
    replace_last_norm(enc, IterNorm)
    assert enc.layer4[1].bn2.running_wm.is_cuda
    assert enc(torch.randn(2, 3, 64, 64, device='cuda')).is_cuda


# ---- channel groups by name -------------------------------------------------------------------------------------
@pytest.mark.parametrize('C,setting,groups', [(2048, 'paper', 1), (2048, 'grouped', 32), (512, 'grouped', 8), (96, 'grouped', 3)])
def test_group_settings_by_name(C, setting, groups):
    for layer in (IterNorm, ZCAWhitening): assert layer(C, num_groups=setting).num_groups == groups

def test_paper_setting_replaces_last_norm_with_one_group_of_all_channels():
    "Hassanpour et al.'s code: IterNorm of one group in place of the last BatchNorm of layer4."
    enc = timm.create_model('resnet18', pretrained=False, num_classes=0)
    replace_last_norm(enc, partial(IterNorm, num_groups='paper'))
    bn = enc.layer4[1].bn2
    assert isinstance(bn, IterNorm) and (bn.num_groups, bn.group_size, bn.T) == (1, 512, 5)
    assert bn.running_wm.shape == (1, 512, 512)

def test_unknown_group_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="num_groups='groups': expected an int or one of"): IterNorm(64, num_groups='groups')
